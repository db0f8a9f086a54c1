"""Fault runs, on both back-ends: the writer SIGKILLed over and over, the database stopped, Redis
(durable profile) SIGKILLed. Each ends with the ledger holding exactly the acknowledged confirms."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.keys import liveness_key
from engine.ledger import ledger_status, sink_for
from engine.ledger.reconcile import reconcile
from engine.ledger.streams import GROUP
from tests.ledger.pgcluster import PgCluster
from tests.ledger.sale import Sale, campaign, engine_for, ledger, sell, until
from tests.support.processes import FLASHSALE, Process, base_env
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own servers

CID = "fault-c1"
KILLS = 20
# 100,000 confirmed orders through PostgreSQL; SQLite (a few times slower to write here) runs a
# smaller sale so that both fit the budget of tests/ledger (see the ledger report)
ORDERS = {"postgres": 100_000, "sqlite": 20_000}
SETTLE_S = 30  # the pending list must be empty within this once the run is over
Outage = tuple[str, Callable[[], None], Callable[[], None]]  # database url, take it away, bring it back


def writer(redis_url: str, db_url: str, name: str, **env: str) -> Process:
    return Process([FLASHSALE, "writer", "--consumer", name, "--claim-idle-ms", "300"],
                   base_env(redis_url, FLASHSALE_DATABASE_URL=db_url, **env)).start()


async def paced_sale(engine: Engine, n: int, *, min_s: float, tolerate_errors: bool = False) -> Sale:
    """``n`` confirmed orders, spread over at least ``min_s`` seconds."""
    sale = Sale()
    chunk = 1000
    started = time.monotonic()
    for i, s in enumerate(range(0, n, chunk)):
        await sell(engine, CID, min(chunk, n - s), start=s, chunk=chunk, sale=sale,
                   tolerate_errors=tolerate_errors)
        ahead = started + min_s * (i + 1) * chunk / n - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    return sale


async def started(client: aioredis.Redis, name: str) -> None:
    """The writer ``name`` is up (its liveness key is there): it handles SIGTERM from now on."""

    async def up() -> bool:
        return bool(await client.exists(liveness_key(name)))

    await until(up, 30, f"writer {name} announces itself")


async def settled(client: aioredis.Redis, within_s: float = SETTLE_S) -> None:
    """Everything read and acknowledged, every confirmed order persisted."""
    stream = keys.CampaignKeys(CID).events

    async def done() -> bool:
        s = (await ledger_status(client)).campaigns[CID]
        return s.pending == 0 and s.undelivered == 0 and s.lag_orders == 0 and \
            (await client.xpending(stream, GROUP))["pending"] == 0

    await until(done, within_s, "the pending list is empty and every confirm persisted")


async def check_exact(client: aioredis.Redis, db_url: str, sale: Sale) -> None:
    """The ledger holds exactly the acknowledged confirms: none lost, none twice."""
    snap = await ledger(db_url, CID)
    rids = [o.reservation_id for o in snap.orders]
    assert len(rids) == len(set(rids)) == snap.persisted_orders
    lost, extra = set(sale.confirmed) - set(rids), set(rids) - set(sale.confirmed)
    assert not lost and not extra, (len(lost), len(extra))
    assert sum(o.units for o in snap.orders) == sale.units
    assert len(snap.events) == len({e.entry_id for e in snap.events}) == sale.events
    assert await client.xlen(keys.DEAD_LETTERS) == 0
    assert (await reconcile(client, sink_for(db_url), CID)).clean


@pytest.mark.slow
async def test_writer_sigkilled_20_times_during_the_run(backend: str, engine: Engine, aredis: aioredis.Redis,
                                                        redis_url: str, db_url: str) -> None:
    n = ORDERS[backend]
    await engine.load_campaign(campaign(CID, total=10 * n))
    ledger_key = keys.CampaignKeys(CID).ledger
    procs = [writer(redis_url, db_url, "w0")]
    selling = asyncio.create_task(paced_sale(engine, n, min_s=15))
    try:
        for kill in range(1, KILLS + 1):
            before = int(await aredis.hget(ledger_key, "persisted_orders") or 0)

            async def progressed(before: int = before) -> bool:
                now = int(await aredis.hget(ledger_key, "persisted_orders") or 0)
                idle = (await ledger_status(aredis)).campaigns[CID].lag_orders == 0
                return now > before or (idle and selling.done())

            await until(progressed, 60, f"writer {kill - 1} makes progress")
            await asyncio.sleep(random.uniform(0, 0.4))
            assert procs[-1].alive(), procs[-1].output()
            await asyncio.to_thread(procs[-1].kill)
            procs.append(writer(redis_url, db_url, f"w{kill}"))
        sale = await selling
        assert len(sale.confirmed) == n
        await settled(aredis)
        await started(aredis, f"w{KILLS}")
        assert await asyncio.to_thread(procs[-1].terminate, 30) == 0
    finally:
        selling.cancel()
        for p in procs:
            p.stop()
    await check_exact(aredis, db_url, sale)


@asynccontextmanager
async def database(backend: str, tmp_path: Path, pg: Callable[[], PgCluster]) -> AsyncIterator[Outage]:
    """(url, take the database away, bring it back): PostgreSQL stopped (a crash: immediate
    mode), or a SQLite file locked by another process's exclusive transaction."""
    if backend == "postgres":
        cluster = pg()
        url = cluster.create_database(f"fs_fault_{uuid.uuid4().hex[:8]}")
        yield url, cluster.stop, lambda: cluster.start() and None
        return
    path = tmp_path / "ledger.db"
    lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        yield f"sqlite:///{path}", lambda: lock.execute("BEGIN EXCLUSIVE") and None, \
            lambda: lock.execute("ROLLBACK") and None
    finally:
        lock.close()


@pytest.mark.slow
async def test_database_down_10_s_mid_run(backend: str, engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                          tmp_path: Path, request: pytest.FixtureRequest) -> None:
    await engine.load_campaign(campaign(CID))
    async with database(backend, tmp_path, lambda: request.getfixturevalue("pg_cluster")) as (url, down, up):
        proc = writer(redis_url, url, "w-outage")
        try:
            selling = asyncio.create_task(paced_sale(engine, 20_000, min_s=14))
            await asyncio.sleep(2)
            await asyncio.to_thread(down)
            await asyncio.sleep(0.5)  # what was committed before is published by now
            persisted = int(await aredis.hget(keys.CampaignKeys(CID).ledger, "persisted_orders") or 0)
            await asyncio.sleep(10)
            s = (await ledger_status(aredis)).campaigns[CID]
            assert s.persisted_orders == persisted  # nothing persisted, nothing acknowledged as if it were
            assert s.lag_orders > 0 and s.undelivered is not None and s.undelivered > 0
            assert proc.alive(), proc.output()
            await asyncio.to_thread(up)
            sale = await selling
            await settled(aredis)
            await started(aredis, "w-outage")
            assert await asyncio.to_thread(proc.terminate, 30) == 0
        finally:
            proc.stop()
        await check_exact(aredis, url, sale)


@pytest.mark.slow
async def test_durable_redis_sigkilled_mid_run(backend: str, db_url: str) -> None:
    """``appendfsync always``: every confirm Redis acknowledged survives its crash into the ledger."""
    server = RedisServer(durable=True).start()
    eng = engine_for(server.url)
    client = aioredis.Redis.from_url(server.url)
    proc = writer(server.url, db_url, "w-durable", FLASHSALE_ALLOW_VOLATILE_REDIS="")
    try:
        await eng.load_campaign(campaign(CID))
        selling = asyncio.create_task(paced_sale(eng, 12_000, min_s=6, tolerate_errors=True))
        await asyncio.sleep(2.5)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(1)
        await asyncio.to_thread(server.start)  # the same port and directory: the AOF is replayed
        sale = await selling
        assert sale.failed > 0 or len(sale.confirmed) == 12_000  # calls made while it was down failed
        await settled(client)
        await started(client, "w-durable")
        assert proc.alive(), proc.output()
        assert await asyncio.to_thread(proc.terminate, 30) == 0
        snap = await ledger(db_url, CID)
        persisted = {o.reservation_id for o in snap.orders}
        assert set(sale.confirmed) <= persisted  # every acknowledged confirm
        counters = await eng.counters(CID)
        assert counters.orders == len(persisted) == snap.persisted_orders  # and nothing Redis does not have
        assert len(snap.events) == len({e.entry_id for e in snap.events})
        assert (await reconcile(client, sink_for(db_url), CID)).clean
    finally:
        proc.stop()
        await eng.close()
        await client.aclose()
        server.stop()
