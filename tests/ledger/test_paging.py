"""Reconcile and recover read Redis in pages: any page size gives the same answer, recover's many
bounded steps rebuild the campaign as one would, and restore.lua judges before it writes."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.core.redis_client import connect_any
from engine.core.scripts import source
from engine.events import Event
from engine.ledger import sink_for
from engine.ledger.history import ResState, by_user, merge, replay, totals
from engine.ledger.reconcile import Reconciliation, reconcile
from engine.ledger.recover import RESTORE_HOLDS, Recovery, recover
from engine.ledger.redisview import CampaignMoving, RedisView, read_view
from engine.ledger.sink import entry_key
from engine.ledger.spool import StreamSpool
from tests.ledger.sale import Sale, campaign, drain, engine_for, ledger, sell

CID = "paging-c1"
K = keys.CampaignKeys(CID)


@pytest.mark.parametrize("page", [1, 2, 7, 64])
async def test_any_page_size_reads_the_same_view(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                 page: int) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 150, confirm_every=2, cancel_every=3)
    whole = await read_view(aredis, CID, records=True, idempotency=True, page=100_000)
    paged = await read_view(aredis, CID, records=True, idempotency=True, page=page)
    assert paged == whole
    assert len(paged.events) == 150 + 75 + 25 and len(paged.records) == len(paged.idempotency) == 150
    assert len(paged.users) == len(whole.users) > 150


async def in_pages_of_3_and_one(aredis: aioredis.Redis, db_url: str) -> tuple[Reconciliation, Reconciliation]:
    sink = sink_for(db_url)
    await sink.open()
    try:
        return await reconcile(aredis, sink, CID, page=3), await reconcile(aredis, sink, CID, page=100_000)
    finally:
        await sink.close()


async def test_reconcile_in_small_pages_finds_what_it_finds_in_large_ones(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 120, confirm_every=2)
    await drain(redis_url, db_url)
    await sell(engine, CID, 40, start=120)  # in the stream only
    await aredis.hincrby(K.users, "t|u3", 5)  # a difference to find
    await aredis.hdel(K.idempotency, "shop-a|k7")
    small, large = await in_pages_of_3_and_one(aredis, db_url)
    assert small == large and not small.clean
    assert len(small.differences) == 2 and small.stream_events > 40


async def test_recover_in_small_pages_and_many_steps(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                    db_url: str) -> None:
    """More dropped holds than one restore.lua call takes: the events go in several steps."""
    await engine.load_campaign(campaign(CID))
    sale = await sell(engine, CID, 2 * RESTORE_HOLDS + 600, confirm_every=2)
    assert len(sale.held) > RESTORE_HOLDS
    await drain(redis_url, db_url)
    await aredis.delete(K.counters, K.users)
    sink = sink_for(db_url)
    await sink.open()
    try:
        result = await recover(engine, sink, CID, page=50)
        assert result.reconciliation.clean and result.dropped_holds == len(sale.held)
        c = await engine.counters(CID)
        assert (c.sold, c.held, c.orders) == (sale.units, 0, len(sale.confirmed))
        assert await aredis.zcard(K.holds) == 0
        assert not [k async for k in aredis.scan_iter(match=f"{K.tag}:restore:*")]  # staging consumed
        await drain(redis_url, db_url)
        snap = await ledger(db_url, CID)
        assert {e.reservation_id for e in snap.events if e.type == "expired"} == sale.held
        assert (await reconcile(aredis, sink, CID, page=7)).clean
    finally:
        await sink.close()


async def dump(r: aioredis.Redis) -> dict[bytes, bytes | None]:
    return {k: await r.dump(k) async for k in r.scan_iter(match=f"{K.tag}:*")}


RESTORE_KEYS = [K.counters, K.users, K.reservations, K.holds, K.events, K.ledger, K.idempotency, K.buyers,
                f"{K.tag}:restore:counters", f"{K.tag}:restore:users", f"{K.tag}:restore:res",
                f"{K.tag}:restore:idem", f"{K.tag}:restore:buyers"]


@pytest.mark.parametrize("case", ["argv count", "units", "swap flag", "too many holds", "staged key type",
                                  "live key type"])
async def test_restore_with_bad_input_writes_nothing(engine: Engine, aredis: aioredis.Redis, case: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 20, confirm_every=2)
    last = (await aredis.xinfo_stream(K.events))["last-generated-id"].decode()
    await aredis.hset(f"{K.tag}:restore:counters", mapping={"sold": 1})
    await aredis.hset(f"{K.tag}:restore:users", mapping={"t|u1": 1})
    await aredis.hset(f"{K.tag}:restore:res", mapping={"r1": b"x"})
    hold = ["r1", "p0", "u1", 1, 100]
    args: list[object] = [last, "0-0", 0, "ledger", 1, 1, *hold]
    if case == "argv count":
        args = args[:-1]
    elif case == "units":
        args[9] = "x"
    elif case == "swap flag":
        args[4] = 2
    elif case == "too many holds":
        args = [last, "0-0", 0, "ledger", 1, 1001, *(hold * 1001)]
    elif case == "staged key type":
        await aredis.set(f"{K.tag}:restore:idem", "not a hash")
    else:
        await aredis.set(K.rate, "x")
        await aredis.delete(K.ledger)
        await aredis.set(K.ledger, "not a hash")
    before = await dump(aredis)
    with pytest.raises(ResponseError, match="restore"):
        await aredis.eval(source("restore"), len(RESTORE_KEYS), *RESTORE_KEYS, *args)
    assert await dump(aredis) == before


async def test_a_view_read_while_the_sale_runs_is_consistent_or_refused(engine: Engine,
                                                                       aredis: aioredis.Redis) -> None:
    """Pages read while reserves land: the view's counters agree with its events (as one
    transaction would have read them), or the read gives up saying the campaign moved; once the
    sale is quiet, the read is exact."""
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 300)

    async def selling() -> None:
        for i in range(1000, 1600, 10):  # bounded: 60 rounds of 10
            await sell(engine, CID, 10, start=i, confirm_every=2)
            await asyncio.sleep(0.01)

    def check(view: RedisView) -> None:
        want = totals(replay(view.events).values())
        assert (view.counters["sold"], view.counters["held"], view.counters["orders"]) == \
            (want.sold, want.held, want.orders)
        assert view.users == {f: n for f, n in want.users.items() if n}

    task = asyncio.create_task(selling())
    moving = 0
    try:
        while not task.done():
            try:
                check(await read_view(aredis, CID, page=5, attempts=1))
            except CampaignMoving:
                moving += 1
    finally:
        await task
    assert moving > 0  # the sale moved under some reads, and they said so
    check(await read_view(aredis, CID, page=5, attempts=1))


def test_any_page_size_hypothesis(redis_url: str) -> None:
    """Hypothesis picks page sizes (and whether records and keys are read); each paged view equals
    the one read in a single page."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    async def build() -> None:
        engine = engine_for(redis_url)
        try:
            await engine.load_campaign(campaign(CID))
            await sell(engine, CID, 90, confirm_every=2, cancel_every=5)
        finally:
            await engine.close()

    async def read(page: int, records: bool, idem: bool) -> RedisView:
        client = connect_any(redis_url, 30.0)
        try:
            return await read_view(client, CID, records=records, idempotency=idem, page=page)
        finally:
            await client.aclose()

    asyncio.run(build())
    whole = {(r, i): asyncio.run(read(100_000, r, i)) for r in (False, True) for i in (False, True)}

    @settings(max_examples=25, deadline=None)
    @given(page=st.integers(1, 120), records=st.booleans(), idem=st.booleans())
    def same(page: int, records: bool, idem: bool) -> None:
        assert asyncio.run(read(page, records, idem)) == whole[(records, idem)]

    same()


MOST = 4  # reservations of one buyer in ``several_each``


async def several_each(engine: Engine, redis_url: str, db_url: str) -> Sale:
    """150 buyers, ten of them with up to MOST reservations through two storefronts; part of the
    sale drained into the ledger, the rest (and confirms of drained holds) in the stream only."""
    await engine.load_campaign(campaign(CID))
    sale = await sell(engine, CID, 110, confirm_every=2, cancel_every=5)
    late = sorted(sale.held)[:5]  # drained holds, confirmed in the stream only
    for i in range(30):
        out = await engine.reserve(CID, ReserveRequest(f"u{i % 10}", f"p{i % 2}", 1, f"again-{i}", "shop-b"))
        rid = out.reservation.reservation_id
        if i % 3 == 0:
            await engine.confirm(CID, rid, f"pay-again-{i}", storefront="shop-b")
            sale.confirmed[rid] = (f"u{i % 10}", f"p{i % 2}", 1)
        else:
            sale.held.add(rid)
    await drain(redis_url, db_url)
    for rid in late:
        await engine.confirm(CID, rid, f"pay-late-{rid}", storefront="shop-a")
        sale.held.discard(rid)
        sale.confirmed[rid] = ("", "", 0)
    return await sell(engine, CID, 40, start=110, confirm_every=3, sale=sale)


@pytest.mark.parametrize("page", [1, 4, 1000])
async def test_the_history_comes_in_pages_of_whole_users(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                         db_url: str, page: int) -> None:
    """The ledger read by user, merged with the stream: each reservation as the whole history
    replayed says, each buyer's reservations in one page, a page no bigger than the page size
    plus one buyer's; the ledger itself comes ``page`` rows at a time."""
    await several_each(engine, redis_url, db_url)
    view = await read_view(aredis, CID)
    snap = await ledger(db_url, CID)
    want = replay(merge(snap.events, view.events))
    sink = sink_for(db_url)
    await sink.open()
    pages: list[list[ResState]] = []
    rows: list[list[Event]] = []

    async def row_page(events: list[Event]) -> None:
        rows.append(events)

    async def user_page(states: list[ResState]) -> None:
        pages.append(states)

    try:
        await sink.history_by_user(CID, view.last_id, page, row_page)
        with StreamSpool() as stream:
            await stream.fill(aredis, CID, view.last_id, page)
            assert stream.count == len(view.events)
            read = await by_user(sink, CID, view.last_id, stream.events(page), page, user_page)
    finally:
        await sink.close()
    assert read == len(snap.events) and len(pages) > 1 if page < 1000 else len(pages) == 1
    assert all(len(r) <= page for r in rows) and sum(map(len, rows)) == len(snap.events)
    flat = [e for r in rows for e in r]
    assert [(e.user_id, e.reservation_id, entry_key(e.entry_id)) for e in flat] == \
        sorted((e.user_id, e.reservation_id, entry_key(e.entry_id)) for e in snap.events)
    where: dict[str, set[int]] = {}
    for i, states in enumerate(pages):
        assert len(states) < page + MOST and (len(states) >= page or i == len(pages) - 1)
        for r in states:
            where.setdefault(r.user_id, set()).add(i)
    assert all(len(found) == 1 for found in where.values())  # whole buyers
    assert {r.reservation_id: r for states in pages for r in states} == want
    assert sum(map(len, pages)) == len(want)


async def test_reconcile_in_pages_of_three_finds_every_kind_of_difference(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    """Differences in fields the history gives, fields only Redis has (a buyer or a storefront
    the history does not know), idempotency keys missing or naming another reservation: the same
    report in pages of 3 as in one page."""
    await several_each(engine, redis_url, db_url)
    other = (await aredis.hget(K.idempotency, "shop-a|k9")).decode()
    await aredis.hincrby(K.users, "t|u3", 5)
    await aredis.hset(K.users, mapping={"c|nobody|p0|shop-z": 2, "t|u5|p1|shop-q": 1, "t|u6|p0|shop-q": 0})
    await aredis.hdel(K.idempotency, "shop-a|k7")
    await aredis.hset(K.idempotency, "shop-a|k8", other)
    small, large = await in_pages_of_3_and_one(aredis, db_url)
    assert small == large
    assert sorted(map(str, small.differences)) == [
        "idempotency keys (<storefront>|<key> -> reservation): Redis 1 missing and 1 naming another reservation "
        "(e.g. 'shop-a|k7', 'shop-a|k8'), ledger + stream 180 known",
        "user nobody: units confirmed, product p0, through storefront shop-z: Redis 2, ledger + stream 0",
        "user u3: units taken (held + confirmed): Redis 9, ledger + stream 4",  # k3 and again-3, -13, -23
        "user u5: units taken (held + confirmed), product p1, through storefront shop-q: Redis 1, ledger + stream 0",
    ]


async def recovered(engine: Engine, db_url: str, page: int) -> Recovery:
    sink = sink_for(db_url)
    await sink.open()
    try:
        return await recover(engine, sink, CID, page=page)
    finally:
        await sink.close()


async def test_recover_in_pages_of_three_rebuilds_what_one_page_does(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    """The same damaged campaign recovered in pages of 3 and in one page: the same counters,
    users, records and idempotency hash, the same dropped holds' events."""
    sale = await several_each(engine, redis_url, db_url)
    await aredis.delete(K.counters, K.users, K.holds)
    await aredis.hdel(K.reservations, *sorted(sale.confirmed)[:20])
    await aredis.hdel(K.idempotency, "shop-a|k1", "shop-b|again-3")
    damaged = {key: await aredis.dump(key) async for key in aredis.scan_iter(match=f"{K.tag}:*")}

    async def run(page: int) -> tuple[list[object], dict[str, object]]:
        for key in [key async for key in aredis.scan_iter(match=f"{K.tag}:*")]:
            await aredis.delete(key)
        for key, value in damaged.items():
            await aredis.restore(key, 0, value)
        result = await recovered(engine, db_url, page)
        assert result.reconciliation.clean, [str(d) for d in result.reconciliation.differences]
        state: dict[str, object] = {key: await aredis.hgetall(key)
                                    for key in (K.counters, K.users, K.reservations, K.idempotency)}
        state["events"] = [{f: v for f, v in fields.items() if f != b"at"}
                           for _, fields in await aredis.xrange(K.events, "(" + last)]
        return [result.orders, result.dropped_holds, result.idempotency_keys], state

    last = (await aredis.xinfo_stream(K.events))["last-generated-id"].decode()
    small, large = await run(3), await run(100_000)
    assert small == large
    assert small[0] == [len(sale.confirmed), len(sale.held), 2]
    assert len(small[1]["events"]) == len(sale.held) > 3  # type: ignore[arg-type]


@pytest.mark.parametrize("page", [3, 1000])
async def test_records_the_history_lacks_count_as_they_say(engine: Engine, aredis: aioredis.Redis, redis_url: str,
                                                          db_url: str, page: int) -> None:
    """Redis lost the stream before the writer drained it but kept the records: recover counts
    each surviving record as it says (its hold dropped, its key back), whatever the page size."""
    await engine.load_campaign(campaign(CID))
    first = await sell(engine, CID, 40, confirm_every=2)
    await drain(redis_url, db_url)
    second = await sell(engine, CID, 20, start=40, confirm_every=2)  # in the stream only, then lost
    await aredis.delete(K.events, K.counters, K.users, K.idempotency)
    result = await recovered(engine, db_url, page)
    assert (result.orders, result.dropped_holds) == (len(first.confirmed) + len(second.confirmed),
                                                     len(first.held) + len(second.held))
    assert result.idempotency_keys == 60
    c = await engine.counters(CID)
    assert (c.sold, c.held, c.orders) == (first.units + second.units, 0, result.orders)
    records = {rid.decode(): msgpack.unpackb(v)[0] for rid, v in (await aredis.hgetall(K.reservations)).items()}
    assert {rid for rid, state in records.items() if state == "expired"} == first.held | second.held
    assert not result.reconciliation.clean  # the ledger lacks them: an operator must look
