"""Pruning the rate limiter: only fields whose arrival time has passed go, a page at a time, and
the limiter limits exactly as before."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.core.prune import RateLimitPruner
from engine.core.sweeper import Sweeper
from engine.errors import RateLimited
from tests.core.conftest import campaign, redis_ms, run_script

K = keys.CampaignKeys("c1")


async def seed(r: aioredis.Redis, stale: int, fresh: int) -> set[bytes]:
    """``stale`` users replenished long ago and ``fresh`` ones still owing time; the fresh ids."""
    now = await redis_ms(r)
    fields = {f"old{i}": now - 1000 - i for i in range(stale)} | {f"new{i}": now + 600_000 for i in range(fresh)}
    await r.hset(K.ratelimit, mapping=fields)
    return {f"new{i}".encode() for i in range(fresh)}


async def test_a_pass_of_small_pages_deletes_every_stale_field_and_only_those(engine: Engine,
                                                                             aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    fresh = await seed(aredis, stale=700, fresh=300)
    pruner = RateLimitPruner(aredis, count=50, calls=1)
    cursor, pages = "0", 0
    while True:
        p = await pruner.page("c1", cursor)
        pages, cursor = pages + 1, p.cursor
        assert p.examined <= 50 * 4  # HSCAN's COUNT is a hint, but a page stays of its order
        if cursor == "0":
            break
    assert pages > 5  # the work was spread over many calls
    assert set(await aredis.hkeys(K.ratelimit)) == fresh
    assert pruner.deleted_total == 700


async def test_the_pruned_limiter_still_limits(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign(rate_limit={"per_second": 1, "burst": 2}))
    ok = [await engine.reserve_unbatched("c1", ReserveRequest("u1", "p2", 1, f"k{i}", "sf")) for i in range(2)]
    assert len(ok) == 2
    await RateLimitPruner(aredis).prune("c1")
    assert await aredis.hexists(K.ratelimit, "u1")  # u1 owes time: kept
    with pytest.raises(RateLimited):
        await engine.reserve_unbatched("c1", ReserveRequest("u1", "p2", 1, "k9", "sf"))
    await asyncio.sleep(2.1)  # u1 is replenished: the field is stale now
    await RateLimitPruner(aredis).prune("c1")
    assert not await aredis.exists(K.ratelimit)
    await engine.reserve_unbatched("c1", ReserveRequest("u1", "p2", 1, "k10", "sf"))  # a full burst again
    await engine.reserve_unbatched("c1", ReserveRequest("u1", "p2", 1, "k11", "sf"))


async def test_bad_arguments_are_refused_and_write_nothing(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await seed(aredis, stale=5, fresh=0)
    for args in (["x", 10], ["0", 0], ["0", 20000], ["0", 1.5]):
        with pytest.raises(ResponseError, match="prune_ratelimit"):
            await run_script(aredis, "prune_ratelimit", [K.ratelimit], args)
    assert await aredis.hlen(K.ratelimit) == 5


async def test_the_sweeper_prunes_as_the_sale_runs(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    fresh = await seed(aredis, stale=3000, fresh=10)
    sweeper = Sweeper(engine, interval_s=0.05)
    sweeper.pruner.interval_s = 0.05
    task = asyncio.create_task(sweeper.run())
    try:
        for _ in range(600):
            if await aredis.hlen(K.ratelimit) == len(fresh):
                break
            await asyncio.sleep(0.05)
    finally:
        sweeper.stop()
        await task
    assert set(await aredis.hkeys(K.ratelimit)) == fresh
