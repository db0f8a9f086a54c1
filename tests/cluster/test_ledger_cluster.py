"""The ledger on the cluster itself: campaigns on every master drained exactly once; the writer
SIGKILLed mid-drain; a master killed mid-drain (its replica takes over); recover after the whole
cluster was flushed. Sales go through the Engine on a cluster client (redis-py's RedisCluster,
the scripts routed by each campaign's slot)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis.exceptions import RedisError

from engine import keys
from engine.core import Engine
from engine.core.redis_client import Client, connect_any
from engine.keys import liveness_key
from engine.ledger import ledger_status, sink_for
from engine.ledger.reconcile import reconcile
from engine.ledger.recover import recover
from tests.ledger.sale import Sale, campaign, drain, ledger, sell, until
from tests.support.cluster import RedisClusterServers
from tests.support.processes import FLASHSALE, Process, base_env

N_CAMPAIGNS = 6
ORDERS = 300  # confirmed orders per campaign (600 reservations: every other one confirmed)


def spread(cluster: RedisClusterServers, n: int = N_CAMPAIGNS) -> list[str]:
    """``n`` campaign ids whose slots fall on every master (at least ``n // 3`` on each)."""
    per: dict[int, list[str]] = {}
    i = 0
    while sum(len(v) for v in per.values()) < n or len(per) < 3:
        cid = f"sh-{i}"
        i += 1
        owner = per.setdefault(cluster.master_of(keys.CampaignKeys(cid).meta).port, [])
        if len(owner) < n // 3:
            owner.append(cid)
    return sorted(c for v in per.values() for c in v)


async def sell_all(engine: Engine, cids: list[str], n: int = 2 * ORDERS) -> dict[str, Sale]:
    for cid in cids:
        await engine.load_campaign(campaign(cid))
    sales = await asyncio.gather(*(sell(engine, cid, n, confirm_every=2, cancel_every=3, chunk=100) for cid in cids))
    return dict(zip(cids, sales, strict=True))


async def check_exact(client: Client, db_url: str, sales: dict[str, Sale]) -> None:
    """Every campaign's ledger holds exactly its acknowledged confirms and events, once each."""
    for cid, sale in sales.items():
        snap = await ledger(db_url, cid)
        rids = [o.reservation_id for o in snap.orders]
        assert len(rids) == len(set(rids)) == snap.persisted_orders, cid
        assert set(rids) == set(sale.confirmed), cid
        assert len(snap.events) == len({e.entry_id for e in snap.events}) == sale.events, cid
        assert (await reconcile(client, sink_for(db_url), cid)).clean, cid
    assert await client.xlen(keys.DEAD_LETTERS) == 0


def replicated(cluster: RedisClusterServers) -> None:
    """Every replica has all its master's writes (so a failover now loses none)."""
    deadline = time.monotonic() + 30
    while True:
        behind = []
        for node in cluster.masters():
            c = node.client()
            try:
                info = c.info("replication")
                offset = int(info["master_repl_offset"])
                lagging = [k for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                           and int(v["offset"]) < offset]
                behind += lagging
            finally:
                c.close()
        if not behind:
            return
        assert time.monotonic() < deadline, f"replicas still behind: {behind}"
        time.sleep(0.05)


async def announced(client: Client, name: str) -> bool:
    return bool(await client.exists(liveness_key(name)))


async def drained(client: Client, cids: list[str]) -> bool:
    try:
        st = (await ledger_status(client)).campaigns
    except (RedisError, AttributeError):  # a master failing over (redis-py may fail inside, see Writer._cluster_glitch)
        return False
    return all(st[c].pending == 0 and st[c].undelivered == 0 and st[c].lag_orders == 0 for c in cids)


async def settled(client: Client, cids: list[str], within_s: float = 60) -> None:
    await until(lambda: drained(client, cids), within_s, "every campaign drained and acknowledged")


async def persisted(client: Client, cids: list[str]) -> int:
    campaigns = (await ledger_status(client)).campaigns
    return sum(campaigns[c].persisted_orders for c in cids)


def writer(redis_url: str, db_url: str, name: str) -> Process:
    return Process([FLASHSALE, "writer", "--consumer", name, "--claim-idle-ms", "500", "--batch-size", "100"],
                   base_env(redis_url, FLASHSALE_DATABASE_URL=db_url)).start()


async def test_campaigns_on_every_master_are_drained_exactly_once(cluster: RedisClusterServers, engine: Engine,
                                                                  aredis: Client, redis_url: str, db_url: str) -> None:
    cids = spread(cluster)
    assert len({cluster.master_of(keys.CampaignKeys(c).events).port for c in cids}) == 3
    sales = await sell_all(engine, cids)
    writer = await drain(redis_url, db_url, batch_size=100)
    assert writer.stats.events == sum(s.events for s in sales.values())
    await check_exact(aredis, db_url, sales)
    status = await ledger_status(aredis)
    assert all(status.campaigns[c].stream_length == 0 for c in cids)  # trimmed on every master


async def test_writer_sigkilled_mid_drain_then_restarted(cluster: RedisClusterServers, engine: Engine,
                                                         aredis: Client, redis_url: str, db_url: str) -> None:
    """Writers SIGKILLed one after another while the campaigns on every master sell."""
    cids = spread(cluster)
    for cid in cids:
        await engine.load_campaign(campaign(cid))
    sales = {cid: Sale() for cid in cids}

    async def selling() -> None:
        for start in range(0, 2 * ORDERS, 100):  # in rounds, so the writers drain while it sells
            await asyncio.gather(*(sell(engine, c, 100, start=start, confirm_every=2, cancel_every=3, sale=sales[c])
                                   for c in cids))
            await asyncio.sleep(0.1)

    sale = asyncio.create_task(selling())
    procs: list[Process] = []
    try:
        for kill in range(4):
            procs.append(writer(redis_url, db_url, f"k{kill}"))
            before = await persisted(aredis, cids)

            async def progressed(before: int = before) -> bool:
                return await persisted(aredis, cids) > before or (sale.done() and await drained(aredis, cids))

            await until(progressed, 60, f"writer k{kill} makes progress")
            await asyncio.sleep(random.uniform(0, 0.2))
            await asyncio.to_thread(procs[-1].kill)  # SIGKILL mid-drain
        procs.append(writer(redis_url, db_url, "last"))
        await sale
        await settled(aredis, cids)
        await until(lambda: announced(aredis, "last"), 30, "the last writer is up")  # it handles SIGTERM
        assert await asyncio.to_thread(procs[-1].terminate, 30) == 0
    finally:
        sale.cancel()
        for p in procs:
            p.stop()
    await check_exact(aredis, db_url, sales)


@pytest.mark.slow
async def test_a_master_killed_mid_drain_fails_over_and_nothing_is_lost_or_doubled(
        engine: Engine, db_url: str) -> None:
    """A private cluster (this one loses a master). Every write replicated before the kill, so
    the failover itself loses nothing; the writer rides it out and the ledger is exact."""
    cluster = RedisClusterServers().start()
    proc: Process | None = None
    try:
        from tests.ledger.sale import engine_for

        eng = engine_for(cluster.url)
        cids = spread(cluster)
        sales = await sell_all(eng, cids)
        await asyncio.to_thread(replicated, cluster)
        victim = cluster.master_of(keys.CampaignKeys(cids[0]).events)
        url = next(n.url for n in cluster.nodes if n.port != victim.port)
        proc = writer(url, db_url, "w-failover")
        client = connect_any(url, 10.0)  # the checks' own client, from a node that stays up

        async def some() -> bool:
            return await persisted(client, cids[:1]) > 0

        await until(some, 60, "the writer starts draining")
        await asyncio.to_thread(victim.kill)
        await asyncio.to_thread(cluster.wait_healthy, 60)  # the replica took over
        async def done() -> bool:
            # a fresh client each time: redis-py 7.4's cluster pipeline keeps a connection it
            # failed to send on, so a client polled through a failover runs out of them
            fresh = connect_any(url, 5.0)
            try:
                return await drained(fresh, cids)
            finally:
                await fresh.aclose()

        try:
            await until(done, 90, "every campaign drained and acknowledged")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the writer said:\n{proc.output()}") from None
        await client.aclose()
        client = connect_any(url, 10.0)
        await until(lambda: announced(client, "w-failover"), 30, "the writer is up")
        assert proc.alive(), proc.output()
        await asyncio.to_thread(victim.start)  # back, as a replica
        assert await asyncio.to_thread(proc.terminate, 30) == 0
        await check_exact(client, db_url, sales)
        await client.aclose()
        await eng.close()
    finally:
        if proc is not None:
            proc.stop()
        cluster.stop()


async def test_recover_after_the_whole_cluster_was_flushed(cluster: RedisClusterServers, engine: Engine,
                                                           aredis: Client, redis_url: str, db_url: str) -> None:
    cids = spread(cluster, 3)
    sales = await sell_all(engine, cids, 200)
    await drain(redis_url, db_url)
    await aredis.flushall()  # every master
    sink = sink_for(db_url)
    await sink.open()
    try:
        for cid in cids:
            r = await recover(engine, sink, cid)
            assert r.reconciliation.clean and r.reloaded_definition
            assert r.orders == len(sales[cid].confirmed)
            assert (await engine.counters(cid)).orders == len(sales[cid].confirmed)
    finally:
        await sink.close()
    assert sorted(await engine.campaign_ids()) == cids
