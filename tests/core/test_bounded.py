"""Unknown campaigns cost nothing: an Engine's per-campaign structures (batchers, cached
definitions) stay bounded whatever campaign ids callers send, and a batcher with work queued or
in flight is never dropped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine, ReserveRequest
from engine.core.calls import KEEP_BATCHERS
from engine.core.engine import DEFINITIONS_KEPT
from engine.errors import NotFound
from engine.settings import Settings
from tests.core.conftest import campaign
from tests.support.servers import RedisServer

pytestmark = pytest.mark.needs_services  # starts its own redis-server: not the fast tier

BOUND = 2 * KEEP_BATCHERS  # a batcher table holds at most the busy ones plus as many idle ones


async def _all(calls: list[Callable[[], Awaitable[Any]]], chunk: int = 500) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(calls), chunk):
        out += await asyncio.gather(*(c() for c in calls[i:i + chunk]), return_exceptions=True)
    return out


def _random_ids(n: int) -> list[str]:
    return [f"nope-{uuid.uuid4().hex}" for _ in range(n)]


async def test_random_campaign_ids_leave_the_caches_bounded(engine: Engine) -> None:
    await engine.load_campaign(campaign())
    ids = _random_ids(3000)
    calls: list[Callable[[], Awaitable[Any]]] = []
    for n, cid in enumerate(ids):
        calls += [lambda cid=cid, n=n: engine.reserve(cid, ReserveRequest("u1", "p1", 1, f"k{n}", "shop")),
                  lambda cid=cid: engine.confirm(cid, "r1", "pay-1", storefront="shop"),
                  lambda cid=cid: engine.cancel(cid, "r1", storefront="shop"),
                  lambda cid=cid: engine.view(cid),
                  lambda cid=cid: engine.holdings(cid, "u1", storefront="shop"),
                  lambda cid=cid: engine.counters(cid)]
    out = await _all(calls)
    assert all(isinstance(o, NotFound) for o in out), {type(o).__name__ for o in out}
    sizes = engine.cache_sizes()
    assert sizes["definitions"] == 0 and sizes["known"] == 0, sizes  # nothing cached for what is not there
    for table in ("reserve_batchers", "confirm_batchers", "cancel_batchers"):
        assert sizes[table] <= BOUND, sizes
    # the real campaign still works, and is cached once read
    assert (await engine.reserve("c1", ReserveRequest("u1", "p1", 1, "real", "shop"))).reservation.units == 1
    assert (await engine.holdings("c1", "u1", storefront="shop")).held_units == 1
    assert engine.cache_sizes()["known"] == 1


async def test_a_campaign_gone_leaves_the_cache(engine: Engine, aredis: aioredis.Redis) -> None:
    await engine.load_campaign(campaign())
    await engine.view("c1")
    assert engine.cache_sizes()["known"] == 1
    await aredis.delete(keys.CampaignKeys("c1").meta)
    with pytest.raises(NotFound):
        await engine.holdings("c1", "u1", storefront="shop")  # the cached definition is checked, found gone, dropped
    assert engine.cache_sizes()["known"] == 0


async def test_definitions_of_many_real_campaigns_are_bounded(engine: Engine) -> None:
    n = DEFINITIONS_KEPT + 100
    await _all([lambda i=i: engine.load_campaign(campaign(f"c{i}")) for i in range(n)])
    await _all([lambda i=i: engine.view(f"c{i}") for i in range(n)])
    sizes = engine.cache_sizes()
    assert sizes["definitions"] == DEFINITIONS_KEPT and sizes["known"] == DEFINITIONS_KEPT, sizes
    assert (await engine.view("c0")).campaign.id == "c0"  # dropped from the cache, read again


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_busy_batchers_are_never_dropped(own_redis: RedisServer) -> None:
    """Redis paused: every batcher has a call in flight (and c1 has two requests queued behind its
    own), so however many there are, none may go. Once Redis answers, they are idle, and dropped."""
    engine = Engine.from_settings(Settings(redis_url=own_redis.url, redis_timeout_s=10.0, batch_inflight=1))
    admin = redis.Redis(port=own_redis.port)
    try:
        await engine.load_campaign(campaign())
        admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        mine = [asyncio.ensure_future(engine.reserve("c1", ReserveRequest(f"u{i}", "p1", 1, f"k{i}", "shop")))
                for i in range(3)]
        await asyncio.sleep(0.1)
        others = [asyncio.ensure_future(engine.reserve(cid, ReserveRequest("u1", "p1", 1, "k", "shop")))
                  for cid in _random_ids(3 * KEEP_BATCHERS)]
        await asyncio.sleep(0.1)
        assert engine.cache_sizes()["reserve_batchers"] == 1 + 3 * KEEP_BATCHERS  # all busy: all kept
        admin.execute_command("CLIENT", "UNPAUSE")
        assert [(await f).reservation.user_id for f in mine] == ["u0", "u1", "u2"]  # in order, all held
        assert all(isinstance(o, NotFound) for o in await asyncio.gather(*others, return_exceptions=True))
        await _all([lambda cid=cid: engine.reserve(cid, ReserveRequest("u1", "p1", 1, "k", "shop"))
                    for cid in _random_ids(2 * BOUND)])
        assert engine.cache_sizes()["reserve_batchers"] <= BOUND  # idle now: pruned
        assert (await engine.counters("c1")).held == 3
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        await engine.close()
