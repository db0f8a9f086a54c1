"""`flashsale demo`, the fast variant, end to end: its own Redis, API and writer, one launch day
through the same code path as `make demo`, a clean verdict, nothing left running."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.processes import FLASHSALE

pytestmark = pytest.mark.needs_services  # starts its own servers


def test_the_demo_fast_variant_ends_with_a_clean_verdict() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["COLUMNS"] = "200"
    proc = subprocess.run([FLASHSALE, "demo", "--buyers", "20000", "--units", "50000", "--users", "64",
                           "--opens-in", "3", "--no-progress", "--seed", "1"],
                          env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "verdict: clean" in out
    assert "Demo: " in out and "units sold" in out
    for line in ("ledger: every confirmed order exactly once", "flashsale reconcile exits 0"):
        row = next(x for x in out.splitlines() if line in x)
        assert " ok " in row, row


def test_the_queued_demo_runs_a_queued_launch_to_a_clean_verdict() -> None:
    """`flashsale demo --queue`: its own admission key, a waiting room opening before the sale,
    scalper farms in the pre-queue, admission, sell-out; the verdict's queue checks all pass."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["COLUMNS"] = "200"
    proc = subprocess.run([FLASHSALE, "demo", "--queue", "--buyers", "2500", "--units", "4000", "--users", "48",
                           "--opens-in", "4", "--admit-per-second", "1000", "--time-bound", "60",
                           "--no-progress", "--seed", "2"],
                          env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert "verdict: clean" in out
    assert "waiting room  opens" in out and "Queue: " in out
    for line in ("queue: every reservation carried its own user's admission token",
                 "queue: a reserve without a token, or with another user's, is refused (403)",
                 "queue: positions fixed, distinct, admitted in position order",
                 "ledger: every confirmed order exactly once"):
        row = next(x for x in out.splitlines() if line in x)
        assert " ok " in row, row
