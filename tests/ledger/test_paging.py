"""Reconcile and recover read Redis in pages: any page size gives the same answer, recover's many
bounded steps rebuild the campaign as one would, and restore.lua judges before it writes."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine import keys
from engine.core import Engine
from engine.core.redis_client import connect_any
from engine.core.scripts import source
from engine.ledger import sink_for
from engine.ledger.history import replay, totals
from engine.ledger.reconcile import reconcile
from engine.ledger.recover import RESTORE_HOLDS, recover
from engine.ledger.redisview import CampaignMoving, RedisView, read_view
from tests.ledger.sale import campaign, drain, engine_for, ledger, sell

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


async def test_reconcile_in_small_pages_finds_what_it_finds_in_large_ones(
        engine: Engine, aredis: aioredis.Redis, redis_url: str, db_url: str) -> None:
    await engine.load_campaign(campaign(CID))
    await sell(engine, CID, 120, confirm_every=2)
    await drain(redis_url, db_url)
    await sell(engine, CID, 40, start=120)  # in the stream only
    await aredis.hincrby(K.users, "t|u3", 5)  # a difference to find
    await aredis.hdel(K.idempotency, "shop-a|k7")
    sink = sink_for(db_url)
    await sink.open()
    try:
        small, large = await reconcile(aredis, sink, CID, page=3), await reconcile(aredis, sink, CID, page=100_000)
    finally:
        await sink.close()
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


RESTORE_KEYS = [K.counters, K.users, K.reservations, K.holds, K.events, K.ledger, K.idempotency,
                f"{K.tag}:restore:counters", f"{K.tag}:restore:users", f"{K.tag}:restore:res",
                f"{K.tag}:restore:idem"]


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
