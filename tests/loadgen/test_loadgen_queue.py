"""`flashsale loadgen` on a queue-mode campaign against a real server, writer and ledger: people
arriving before and after the opening and scalper farms firing at the pre-queue's first
millisecond all go through the waiting room (join, poll as told, reserve with the admission
token); the verdict's queue checks judge the run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.loadgen.record import Record
from tests.loadgen.conftest import TOKEN, Stack
from tests.support.processes import FLASHSALE, base_env

pytestmark = pytest.mark.needs_services


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def loadgen(stack: Stack, campaign: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(stack.redis.url, COLUMNS="250")
    return subprocess.run(
        [FLASHSALE, "loadgen", "--url", stack.api.url, "--campaign", campaign, "--token", TOKEN,
         "--database-url", stack.database_url, "--redis-url", stack.redis.url, "--no-progress", *args],
        env=env, capture_output=True, text=True, timeout=240)


def queued_campaign(stack: Stack, cid: str, *, units: int, **extra: Any) -> None:
    stack.campaign(cid, units=units, opens_in_s=5.0, hold_seconds=60,
                   admission={"mode": "queue", "queue_opens_at": _at(2.0), "admit_per_second": 300,
                              "token_seconds": 120}, **extra)


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    record: Record

    @property
    def out(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def row(self, check: str) -> str:
        return next(x for x in self.out.splitlines() if check in x)


@pytest.fixture(scope="module")
def queue_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    queued_campaign(stack, "lg-queue", units=1200)
    path = tmp_path_factory.mktemp("lgq") / "record.json"
    proc = loadgen(stack, "lg-queue", "--arrive", "6", "--arrive-from", "-2.5", "--buyers", "300",
                   "--scalpers", "3x20", "--scalper-spread", "2,3,1", "--pool", "32", "--poll-cap", "1",
                   "--duration", "45", "--seed", "3", "--bad-share", "0", "--token-probe-share", "0",
                   "--record-out", str(path))
    yield Run(proc, Record.load(path))


def test_a_queued_launch_goes_through_the_waiting_room_with_a_clean_verdict(queue_run: Run) -> None:
    assert queue_run.proc.returncode == 0, queue_run.out
    assert "verdict: clean" in queue_run.out
    rec = queue_run.record
    assert rec.queued and rec.people == 300 and rec.scalpers == 60
    assert rec.grants and all(g.token_user == g.user for g in rec.grants)
    pre = [t for t in rec.tickets.values() if t.pre_queue]
    late = [t for t in rec.tickets.values() if not t.pre_queue]
    assert pre and late  # people (and every farm) joined the pre-queue; people came after the opening too
    admitted = [t for t in rec.tickets.values() if t.admitted_ms is not None]
    assert len(admitted) > 100
    assert all(t.position is not None for t in admitted)
    # every account of a farm was in the pre-queue (they fired at its first millisecond)
    farm_users = {g.user for g in rec.grants if rec.operator_of(g.user) is not None}
    assert farm_users and all(rec.tickets[t].pre_queue for t in rec.tickets if rec.tickets[t].user in farm_users)
    for check in ("queue: every reservation carried its own user's admission token",
                  "queue: positions fixed, distinct, admitted in position order",
                  "ledger: every confirmed order exactly once"):
        assert " ok " in queue_run.row(check), queue_run.row(check)



def test_reserves_without_a_token_or_with_another_users_are_judged_by_what_the_server_did(
        stack: Stack, tmp_path: Path) -> None:
    """Every admitted buyer first tries without their token and with another user's: a server that
    enforces the token refuses them all (clean verdict); one that grants any is caught by the verdict."""
    queued_campaign(stack, "lg-queue-probes", units=800)
    path = tmp_path / "record.json"
    proc = loadgen(stack, "lg-queue-probes", "--arrive", "4", "--arrive-from", "-2", "--buyers", "150",
                   "--pool", "16", "--poll-cap", "1", "--duration", "40", "--seed", "5", "--bad-share", "0",
                   "--token-probe-share", "1", "--record-out", str(path))
    run = Run(proc, Record.load(path))
    probes = [p for p in run.record.probes if p.expect.startswith("ADMISSION_")]
    assert {p.expect for p in probes} == {"ADMISSION_REQUIRED", "ADMISSION_INVALID"}, run.out
    granted = [p for p in probes if p.status < 400]
    tokenless = [g for g in run.record.grants if g.token_user != g.user]
    assert len(tokenless) == len(granted)  # the record knows which grant came without its own token
    row = run.row("queue: every reservation carried its own user's admission token")
    if granted:  # a server that does not check the token yet
        assert proc.returncode == 1 and "VIOLATED" in row, run.out
    else:
        assert proc.returncode == 0 and " ok " in row, run.out
        assert " ok " in run.row("queue: a reserve without a token, or with another user's, is refused (403)")
