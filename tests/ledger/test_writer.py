"""The writer in this process, on both back-ends: exactly once, redelivery, claims, dead letters,
several writers, campaigns that appear later, trimming, the published lag."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.core.redis_client import connect_any
from engine.ledger import Writer, WriterSettings, ledger_status, sink_for
from engine.ledger.decoding import row_of
from engine.ledger.health import progress_script
from engine.ledger.reconcile import reconcile
from engine.ledger.streams import GROUP, Entry, Streams
from tests.ledger.sale import PRICE, campaign, drain, ledger, sell, until
from tests.support.servers import RedisServer

CID = "ledger-c1"


async def test_every_transition_once_and_every_confirm_one_order(engine: Engine, aredis: aioredis.Redis,
                                                                 redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID, hold_seconds=1))
    sale = await sell(engine, CID, 1200, confirm_every=2, cancel_every=3)
    await asyncio.sleep(1.1)  # the remaining holds pass their deadline
    expired, _ = await engine.expire_due(CID, 10_000)
    assert expired == len(sale.held) > 0
    entries = await aredis.xlen(keys.CampaignKeys(CID).events)
    assert entries == sale.events + expired

    await drain(redis_url, db_url)
    snap = await ledger(db_url, CID)
    assert {o.reservation_id for o in snap.orders} == set(sale.confirmed)
    for o in snap.orders:
        uid, pid, units = sale.confirmed[o.reservation_id]
        assert (o.user_id, o.product_id, o.units, o.amount) == (uid, pid, units, units * PRICE)
        assert o.payment_ref.startswith("pay-") and o.confirmed_at_ms > 0
    kinds = [e.type for e in snap.events]
    assert len(kinds) == entries
    assert kinds.count("confirmed") == len(sale.confirmed)
    assert kinds.count("cancelled") == len(sale.cancelled)
    assert kinds.count("expired") == expired
    assert snap.persisted_orders == len(sale.confirmed)

    status = (await ledger_status(aredis)).campaigns[CID]
    assert (status.persisted_orders, status.lag_orders, status.pending, status.undelivered) == \
        (len(sale.confirmed), 0, 0, 0)
    assert status.stream_length == 0  # every group acknowledged everything: trimmed
    assert (await reconcile(aredis, sink_for(db_url), CID)).clean


async def test_a_batch_committed_but_never_acknowledged_is_claimed_and_written_once(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    """A writer that died between commit and XACK: its entries are pending and already stored."""
    await engine.load_campaign(campaign(CID))
    sale = await sell(engine, CID, 400)
    stream = keys.CampaignKeys(CID).events
    await aredis.xgroup_create(stream, GROUP, id="0")
    taken = (await aredis.xreadgroup(GROUP, "dead-writer", {stream: ">"}, count=1000))[0][1]
    assert len(taken) == sale.events == 800
    sink = sink_for(db_url)
    await sink.open()
    await sink.write([row_of(CID, eid.decode(), f) for eid, f in taken[:500]])  # committed, never acked
    await sink.close()

    writer = await drain(redis_url, db_url, claim_idle_ms=50)
    assert writer.stats.events == 800  # claimed from the dead writer, all of it
    snap = await ledger(db_url, CID)
    assert len(snap.events) == 800 and len({e.entry_id for e in snap.events}) == 800
    assert {o.reservation_id for o in snap.orders} == set(sale.confirmed)
    assert snap.persisted_orders == len(sale.confirmed) == 400  # counted once, not 400 + 250
    assert (await aredis.xpending(stream, GROUP))["pending"] == 0
    assert int(await aredis.hget(keys.CampaignKeys(CID).ledger, "persisted_orders")) == 400


async def test_redelivery_of_everything_writes_nothing_twice(engine: Engine, aredis: aioredis.Redis,
                                                             redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 300)
    stream = keys.CampaignKeys(CID).events
    await aredis.xgroup_create(stream, GROUP, id="0")
    await aredis.xgroup_create(stream, "audit", id="0")  # holds the entries back from trimming
    await drain(redis_url, db_url)
    await aredis.xgroup_setid(stream, GROUP, "0")  # as if no acknowledgement had ever happened
    again = await drain(redis_url, db_url)
    assert again.stats.events == 600
    snap = await ledger(db_url, CID)
    assert (len(snap.events), len(snap.orders), snap.persisted_orders) == (600, 300, 300)


async def test_entries_that_are_not_events_are_dead_lettered_at_once(engine: Engine, aredis: aioredis.Redis,
                                                                     redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    stream = keys.CampaignKeys(CID).events
    await sell(engine, CID, 10)
    bad = await aredis.xadd(stream, {"e": "refunded", "rid": "r-x"})
    garbled = await aredis.xadd(stream, {"e": "cancelled", "rid": "r-y", "pid": "p0", "uid": b"\xff\xfe",
                                         "units": "1", "amount": "1", "at": "1"})
    await sell(engine, CID, 10, start=10)
    writer = await drain(redis_url, db_url)
    assert writer.stats.dead_letters == 2
    dead = await aredis.xrange(keys.DEAD_LETTERS)
    assert [f[b"id"] for _, f in dead] == [bad, garbled]
    fields = dead[0][1]
    assert fields[b"campaign"] == CID.encode() and fields[b"deliveries"] == b"1"
    assert b"unknown event type" in fields[b"reason"] and fields[b"f.e"] == b"refunded"
    assert b"not UTF-8" in dead[1][1][b"reason"] and dead[1][1][b"f.uid"] == b"\xff\xfe"
    snap = await ledger(db_url, CID)
    assert len(snap.orders) == 20
    status = await ledger_status(aredis)
    assert status.dead_letters == 2 and status.campaigns[CID].dead_letters == 2
    assert status.campaigns[CID].pending == 0
    report = await reconcile(aredis, sink_for(db_url), CID)
    assert [d.what.split(" (")[0] for d in report.differences] == [f"dead letter {d.decode()}" for d, _ in dead]


async def test_a_row_the_database_refuses_is_retried_then_dead_lettered(engine: Engine, aredis: aioredis.Redis,
                                                                        redis_url: str, db_url: str) -> None:
    """units = 0 decodes but breaks a CHECK: the rest of its batch commits; it alone is delivered
    five times, then parked."""
    await engine.load_campaign(campaign(CID))
    stream = keys.CampaignKeys(CID).events
    await sell(engine, CID, 50)
    poison = await aredis.xadd(stream, {"e": "cancelled", "rid": "r-poison", "pid": "p0", "uid": "u0",
                                        "units": "0", "amount": "0", "at": "1"})
    await sell(engine, CID, 50, start=50)
    writer = await drain(redis_url, db_url, claim_idle_ms=100)
    assert writer.stats.dead_letters == 1
    dead = await aredis.xrange(keys.DEAD_LETTERS)
    assert [(f[b"id"], int(f[b"deliveries"])) for _, f in dead] == [(poison, 5)]
    assert dead[0][1][b"reason"] == b"delivered 5 times without being persisted"
    snap = await ledger(db_url, CID)
    assert len(snap.orders) == 100 and len(snap.events) == 200
    assert (await aredis.xpending(stream, GROUP))["pending"] == 0


async def test_several_writers_at_once_while_selling(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                     db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    clients = [connect_any(redis_url, 30.0) for _ in range(3)]
    sinks = [sink_for(db_url) for _ in range(3)]
    for s in sinks:
        await s.open()
    writers = [Writer(c, s, WriterSettings(consumer=f"w{i}", batch_size=50, block_ms=100, claim_idle_ms=500))
               for i, (c, s) in enumerate(zip(clients, sinks, strict=True))]
    runs = [asyncio.create_task(w.run()) for w in writers]
    sale = await sell(engine, CID, 3000, confirm_every=2, chunk=100)

    async def caught_up() -> bool:
        return (await ledger_status(aredis)).campaigns[CID].lag_orders == 0

    await until(caught_up, 60, "the writers persist every confirmed order")
    for w in writers:
        w.stop()
    await asyncio.gather(*runs)
    for c, s in zip(clients, sinks, strict=True):
        await s.close()
        await c.aclose()
    snap = await ledger(db_url, CID)
    assert sorted(o.reservation_id for o in snap.orders) == sorted(sale.confirmed)
    assert len(snap.events) == sale.events and snap.persisted_orders == len(sale.confirmed)
    assert sum(w.stats.events for w in writers) >= sale.events
    assert sum(1 for w in writers if w.stats.events) >= 2  # the work was shared


async def test_a_campaign_created_after_start_is_followed(engine: Engine, aredis: aioredis.Redis,
                                                          redis_url: str, db_url: str) -> None:
    client = connect_any(redis_url, 30.0)
    sink = sink_for(db_url)
    await sink.open()
    writer = Writer(client, sink, WriterSettings(consumer="w", refresh_s=0.1, block_ms=100))
    run = asyncio.create_task(writer.run())
    await asyncio.sleep(0.3)
    await engine.load_campaign(campaign("later"))
    sale = await sell(engine, "later", 100)

    async def persisted() -> bool:
        return writer.stats.persisted.get("later", 0) >= 100

    await until(persisted, 30, "the new campaign's orders are persisted")
    writer.stop()
    await run
    assert writer.stats.persisted["later"] == 100
    assert {o.reservation_id for o in (await sink.snapshot("later")).orders} == set(sale.confirmed)
    assert await sink.campaign_definition("later") is not None  # kept for recover
    await sink.close()
    await client.aclose()


async def test_trimming_keeps_what_another_group_has_not_acknowledged(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    stream = keys.CampaignKeys(CID).events
    await aredis.xgroup_create(stream, "audit", id="0", mkstream=True)
    await sell(engine, CID, 100)
    await drain(redis_url, db_url)
    assert await aredis.xlen(stream) == 200  # the audit group has read nothing
    got = (await aredis.xreadgroup("audit", "a", {stream: ">"}, count=150))[0][1]
    await aredis.xack(stream, "audit", *[eid for eid, _ in got[:120]])  # 30 read, not acknowledged
    await sell(engine, CID, 10, start=100)
    await drain(redis_url, db_url)
    assert await aredis.xlen(stream) == 220 - 120
    first = (await aredis.xrange(stream, count=1))[0][0]
    assert first == got[120][0]


async def test_persisted_orders_never_moves_backwards(aredis: aioredis.Redis) -> None:
    publish = progress_script(aredis)
    key = keys.CampaignKeys(CID).ledger
    assert await publish(keys=[key], args=[10]) == 10
    assert await publish(keys=[key], args=[7]) == 10  # a slower writer publishing an older figure
    assert await publish(keys=[key], args=[12]) == 12
    assert int(await aredis.hget(key, "persisted_orders")) == 12


@pytest.mark.needs_services  # starts its own redis-server
async def test_undelivered_is_counted_when_redis_lost_its_group_counters() -> None:
    """After an AOF reload Redis 7.0 reports no lag for a group; the status counts it instead."""
    server = RedisServer(durable=True).start()
    client = aioredis.Redis.from_url(server.url)
    try:
        stream = keys.CampaignKeys(CID).events
        await client.sadd(keys.CAMPAIGNS, CID)
        for i in range(100):
            await client.xadd(stream, {"n": i})
        await client.xgroup_create(stream, GROUP, id="0")
        await client.xreadgroup(GROUP, "c", {stream: ">"}, count=60)
        await asyncio.to_thread(server.restart)
        await client.connection_pool.disconnect()
        assert (await client.xinfo_groups(stream))[0]["lag"] is None
        status = (await ledger_status(client)).campaigns[CID]
        assert (status.undelivered, status.pending, status.stream_length) == (40, 60, 100)
    finally:
        await client.aclose()
        server.stop()


async def test_without_the_lean_wire_redis_py_does_the_same(engine: Engine, aredis: aioredis.Redis,
                                                           redis_url: str, db_url: str) -> None:
    """A Redis the core's wire cannot reach (TLS, …): reads and acknowledgements go through redis-py."""
    await engine.load_campaign(campaign(CID))
    sale = await sell(engine, CID, 300, confirm_every=2)
    client = connect_any(redis_url, 30.0)
    sink = sink_for(db_url)
    await sink.open()
    writer = Writer(client, sink, WriterSettings(consumer="plain", burst=True))
    writer.streams.close()
    writer.streams._reads = writer.streams._acks = None
    await writer.run()
    await sink.close()
    await client.aclose()
    snap = await ledger(db_url, CID)
    assert {o.reservation_id for o in snap.orders} == set(sale.confirmed) and len(snap.events) == sale.events
    assert (await aredis.xpending(keys.CampaignKeys(CID).events, GROUP))["pending"] == 0


async def test_a_stream_lost_under_a_running_writer_is_followed_again(engine: Engine, aredis: aioredis.Redis,
                                                                      redis_url: str, db_url: str) -> None:
    """NOGROUP (the stream and its group vanished): the writer re-creates the group and goes on."""
    await engine.load_campaign(campaign(CID))
    client = connect_any(redis_url, 30.0)
    sink = sink_for(db_url)
    await sink.open()
    writer = Writer(client, sink, WriterSettings(consumer="w", block_ms=100))
    run = asyncio.create_task(writer.run())
    first = await sell(engine, CID, 50)

    async def persisted(n: int) -> bool:
        return writer.stats.persisted.get(CID, 0) >= n

    await until(lambda: persisted(50), 30, "the first orders are persisted")
    await aredis.delete(keys.CampaignKeys(CID).events)
    second = await sell(engine, CID, 50, start=50)
    await until(lambda: persisted(100), 30, "orders after the loss are persisted")
    writer.stop()
    await run
    assert {o.reservation_id for o in (await sink.snapshot(CID)).orders} == set(first.confirmed) | set(second.confirmed)
    await sink.close()
    await client.aclose()


class _Recording(Writer):
    """The writer, noting each pause it takes (``_sleep``) before taking it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pauses: list[float] = []

    async def _sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await super()._sleep(seconds)


async def _pauses_draining(engine: Engine, redis_url: str, db_url: str, cid: str, **settings: object) -> list[float]:
    """Twelve events already in the stream, read 5 at a time: the pauses the writer took."""
    await engine.load_campaign(campaign(cid))
    await sell(engine, cid, 12, start=1, confirm_every=10**6)  # held: one "reserved" event each
    client = connect_any(redis_url, 30.0)
    sink = sink_for(db_url)
    await sink.open()
    writer = _Recording(client, sink, WriterSettings(consumer="w", batch_size=5, block_ms=100, **settings))  # type: ignore[arg-type]
    run = asyncio.create_task(writer.run())

    async def all_in() -> bool:
        return writer.stats.events >= 12

    await until(all_in, 30, "the twelve events are committed")
    writer.stop()
    await run
    assert len((await sink.snapshot(cid)).events) == 12
    await sink.close()
    await client.aclose()
    return writer.pauses


async def test_a_writer_lingers_after_a_short_read_only(engine: Engine, redis_url: str, db_url: str) -> None:
    """Reads of 5, 5, then 2: the writer caught up on the third and waits ``linger_ms`` there,
    once, so what arrives meanwhile joins its next commit; the full reads before it do not wait."""
    pauses = await _pauses_draining(engine, redis_url, db_url, "ledger-linger", linger_ms=250)
    assert pauses.count(0.25) == 1


async def test_a_writer_without_linger_or_in_burst_never_lingers(engine: Engine, redis_url: str, db_url: str) -> None:
    assert 0.0 not in await _pauses_draining(engine, redis_url, db_url, "ledger-eager", linger_ms=0)
    assert 0.25 not in await _pauses_draining(engine, redis_url, db_url, "ledger-burst", linger_ms=250, burst=True)


async def test_the_dead_letter_stream_keeps_its_newest_entries_and_counts_the_rest(aredis: aioredis.Redis) -> None:
    streams = Streams(aredis, "w-dead", batch_size=10, claim_idle_ms=1000, max_deliveries=3, dead_max=3)
    try:
        stream = keys.CampaignKeys(CID).events
        trimmed = [await streams.dead_letter(Entry(stream, CID, f"1-{i}", [b"e", b"x"]), "test", 1)
                   for i in range(5)]
    finally:
        streams.close()
    assert trimmed == [0, 0, 0, 1, 1]
    assert [f[b"id"] for _, f in await aredis.xrange(keys.DEAD_LETTERS)] == [b"1-2", b"1-3", b"1-4"]
    assert await aredis.get(keys.DEAD_LETTERS_TRIMMED) == b"2"
    assert keys.DEAD_LETTERS_MAX >= 10_000  # the documented bound of a real deployment


async def test_touch_refreshes_every_entry_still_its_own_and_none_another_writer_claimed(
        engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 1200)  # 2400 entries: more than one chunk of the script's XCLAIM
    stream = keys.CampaignKeys(CID).events
    await aredis.xgroup_create(stream, GROUP, id="0")
    taken = [eid for eid, _ in (await aredis.xreadgroup(GROUP, "w-a", {stream: ">"}, count=5000))[0][1]]
    await aredis.xclaim(stream, GROUP, "w-b", 0, taken[:100], justid=True)  # w-b claimed these meanwhile
    await asyncio.sleep(0.3)
    streams = Streams(aredis, "w-a", batch_size=10, claim_idle_ms=1000, max_deliveries=3)
    try:
        assert await streams.touch({stream: taken}) == len(taken) - 100
    finally:
        streams.close()
    pending = await aredis.xpending_range(stream, GROUP, "-", "+", 5000)
    owner = {p["message_id"]: p["consumer"] for p in pending}
    assert [owner[e] for e in taken[:100]] == [b"w-b"] * 100
    assert {owner[e] for e in taken[100:]} == {b"w-a"}
    assert all(p["time_since_delivered"] < 300 for p in pending if p["consumer"] == b"w-a")
    assert all(p["times_delivered"] == 1 for p in pending if p["consumer"] == b"w-a")  # no delivery counted
