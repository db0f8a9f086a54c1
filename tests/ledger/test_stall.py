"""Two real writer processes, one stalled (SIGSTOP) past the claim time and then resumed: the
other writer claims what the stalled one held, the resumed one never takes it back, and every
confirmed order lands in the ledger exactly once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.ledger.streams import GROUP
from tests.ledger.sale import campaign, ledger, sell, until
from tests.ledger.test_faults import check_exact, settled, started
from tests.support.processes import FLASHSALE, Process, base_env

CID = "fault-c1"  # the helpers of test_faults settle and check this campaign
CLAIM_IDLE_MS = 1000
WATCH_S = 3.0  # how long the resumed writer is watched: a dozen of its idle-time refreshes


def writer(redis_url: str, db_url: str, name: str) -> Process:
    return Process([FLASHSALE, "writer", "--consumer", name, "--claim-idle-ms", str(CLAIM_IDLE_MS)],
                   base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)).start()


async def held(client: aioredis.Redis) -> dict[str, int]:
    """Pending entries of the campaign's stream, by consumer."""
    summary = await client.xpending(keys.CampaignKeys(CID).events, GROUP)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or []}


async def test_a_writer_stalled_past_the_claim_time_does_not_take_back_what_another_holds(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, tmp_path: Path) -> None:
    await engine.load_campaign(campaign(CID))
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    procs = [writer(redis_url, url, "w-a")]
    try:
        await started(aredis, "w-a")
        first = await sell(engine, CID, 50)
        await settled(aredis)
        lock.execute("BEGIN EXCLUSIVE")  # the database is away: what is read stays in flight
        sale = await sell(engine, CID, 400, start=50, sale=first)

        async def all_read() -> bool:
            return (await held(aredis)).get("w-a", 0) == 400 * 2  # reserved + confirmed, each

        await until(all_read, 30, "w-a reads every new entry")
        procs[0].signal(signal.SIGSTOP)
        procs.append(writer(redis_url, url, "w-b"))  # started now, it holds nothing of its own

        async def claimed() -> bool:
            return (await held(aredis)).get("w-b", 0) > 0

        await until(claimed, 30, "w-b claims entries the stalled w-a held")
        kept = (await held(aredis)).get("w-a", 0)
        procs[0].signal(signal.SIGCONT)
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:  # the resumed w-a refreshes its batches every CLAIM_IDLE_MS / 4
            now = await held(aredis)
            assert now.get("w-a", 0) <= kept, f"the resumed w-a took back entries w-b held: {now}"
            await asyncio.sleep(0.02)
        assert procs[0].alive(), procs[0].output()
        lock.execute("ROLLBACK")
        await settled(aredis)
        for name in ("w-a", "w-b"):
            await started(aredis, name)
        for p in procs:
            assert await asyncio.to_thread(p.terminate, 30) == 0, p.output()
    finally:
        for p in procs:
            p.signal(signal.SIGCONT)
            p.stop()
        lock.close()
    assert len((await ledger(url, CID)).orders) == len(sale.confirmed)
    await check_exact(aredis, url, sale)
