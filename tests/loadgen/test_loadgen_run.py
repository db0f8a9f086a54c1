"""`flashsale loadgen` against a real server, writer and ledger: a clean verdict, and the verdict
catching a record that broke a cap or oversold (the same live state, a forged record)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.loadgen.record import CANCELLED, CONFIRMED, EXPIRED, HELD, Grant, Record
from tests.loadgen.conftest import TOKEN, Stack
from tests.support.processes import FLASHSALE, base_env

CAMPAIGN = "lg-short"


def loadgen(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(stack.redis.url, COLUMNS="250")
    return subprocess.run(
        [FLASHSALE, "loadgen", "--url", stack.api.url, "--campaign", CAMPAIGN, "--token", TOKEN,
         "--database-url", stack.database_url, "--redis-url", stack.redis.url, "--no-progress", *args],
        env=env, capture_output=True, text=True, timeout=240)


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    record: Record
    path: Path


@pytest.fixture(scope="module")
def short_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    # a 2 s hold: abandoned holds expire during the run, and their units must come back
    stack.campaign(CAMPAIGN, units=3000, opens_in_s=4.0, hold_seconds=2)
    path = tmp_path_factory.mktemp("loadgen") / "record.json"
    proc = loadgen(stack, "--users", "32", "--duration", "40", "--buyers", "2500", "--bad-share", "0.05",
                   "--seed", "7", "--trickle", "2", "--record-out", str(path))
    yield Run(proc, Record.load(path), path)


def test_a_short_run_sells_out_with_a_clean_verdict(stack: Stack, short_run: Run) -> None:
    out = short_run.proc.stdout + short_run.proc.stderr
    assert short_run.proc.returncode == 0, out + "\nwriter:\n" + stack.writer.output()
    assert "verdict: clean" in out
    rec = short_run.record
    states = {g.state for g in rec.grants}
    assert CONFIRMED in states and (CANCELLED in states or HELD in states or EXPIRED in states)
    assert rec.rejections["NOT_OPEN"] > 0  # the pre-opening trickle was turned away
    assert rec.bad and rec.replays and rec.probes
    assert rec.sold_out_ms is not None
    # the ledger was judged, not skipped
    for line in ("ledger: every confirmed order exactly once", "flashsale reconcile exits 0"):
        row = next(x for x in out.splitlines() if line in x)
        assert " ok " in row, row


def _forge(run: Run, tmp: Path, grant: Grant) -> Path:
    rec = Record.load(run.path)
    rec.grants.append(grant)
    path = tmp / "forged.json"
    rec.save(path)
    return path


def test_the_verdict_fails_a_record_that_broke_a_cap(stack: Stack, short_run: Run, tmp_path: Path) -> None:
    g = next(g for g in short_run.record.grants if g.state == CONFIRMED)
    forged = Grant(rid="forged-cap", key="forged-cap", user=g.user, product=g.product, units=10,
                   amount=10 * 10000, expires_ms=int(g.granted_ms) + 10**9, granted_ms=g.granted_ms + 1,
                   state=CONFIRMED)
    proc = loadgen(stack, "--judge", str(_forge(short_run, tmp_path, forged)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cap_row = next(x for x in proc.stdout.splitlines() if "no user held more than a cap" in x)
    assert "VIOLATED" in cap_row and g.user in cap_row


def test_the_verdict_fails_a_record_that_oversold(stack: Stack, short_run: Run, tmp_path: Path) -> None:
    forged = Grant(rid="forged-oversell", key="forged-oversell", user="someone-else", product="tiny-times-3",
                   units=3000, amount=3000 * 10000, expires_ms=0, granted_ms=0.0, state=CONFIRMED)
    proc = loadgen(stack, "--judge", str(_forge(short_run, tmp_path, forged)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(x for x in proc.stdout.splitlines() if "units granted and not released ≤ total" in x)
    assert "VIOLATED" in row


def test_no_token_is_a_usage_error(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    proc = subprocess.run([FLASHSALE, "loadgen", "--url", stack.api.url, "--campaign", CAMPAIGN],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "storefront token" in proc.stderr


def test_a_paced_run_to_its_time_bound_is_clean(stack: Stack) -> None:
    """--rate paces the offered load; --keep-going runs to the time bound on stock that lasts."""
    stack.campaign("lg-paced", units=200_000, opens_in_s=1.0)
    env = base_env(stack.redis.url, COLUMNS="250")
    proc = subprocess.run(
        [FLASHSALE, "loadgen", "--url", stack.api.url, "--campaign", "lg-paced", "--token", TOKEN,
         "--database-url", stack.database_url, "--redis-url", stack.redis.url, "--no-progress",
         "--users", "16", "--duration", "5", "--rate", "300", "--keep-going", "--trickle", "0.5"],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: clean" in proc.stdout and "not sold out" in proc.stdout
