"""Fixtures of the core tests: campaign definitions relative to Redis TIME, engines, raw script calls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.campaign import Campaign, ms_to_rfc3339, parse
from engine.core import Engine
from engine.core.scripts import source
from engine.settings import Settings
from tests.support.servers import RedisServer

HIGH_RATE = {"per_second": 1_000_000, "burst": 1_000_000}  # the limiter never interferes
DAY_MS = 86_400_000


def definition(cid: str = "c1", *, opens_ms: int | None = None, closes_ms: int | None = None,
               **overrides: Any) -> dict[str, Any]:
    """An open campaign (by wall clock, which Redis shares here) of two products, rate limit off."""
    now = int(time.time() * 1000)
    d: dict[str, Any] = {
        "id": cid, "title": "测试 campaign", "currency": "CNY", "unit_price": 10000,
        "opens_at": ms_to_rfc3339(opens_ms if opens_ms is not None else now - DAY_MS),
        "closes_at": ms_to_rfc3339(closes_ms if closes_ms is not None else now + DAY_MS),
        "hold_seconds": 900, "total_units": 100, "user_cap_units": 10, "rate_limit": HIGH_RATE,
        "products": [{"id": "p1", "title": "小时代3", "total_units": 60, "user_cap_units": 4},
                     {"id": "p2", "title": "狼图腾", "total_units": 80}],
    }
    d.update(overrides)
    return d


def campaign(cid: str = "c1", **overrides: Any) -> Campaign:
    return parse(definition(cid, **overrides))


@pytest.fixture(scope="package")
def redis_server() -> Iterator[RedisServer]:
    """tests/core's own redis-server, in place of the session one: another area's long-lived
    process on the session Redis (a session-scoped API server runs a sweeper) would expire the
    holds these tests force past their deadline, and race the sweepers they count."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[Engine]:
    e = Engine.from_settings(Settings(redis_url=redis_url, redis_timeout_s=10.0))
    yield e
    await e.close()


@pytest.fixture
def make_engine(redis_url: str) -> Callable[..., Engine]:
    """More engines on the same Redis (as several API processes would be); closed by the test."""

    def make(**settings: Any) -> Engine:
        return Engine.from_settings(Settings(redis_url=redis_url, redis_timeout_s=10.0, **settings))

    return make


async def redis_ms(r: aioredis.Redis) -> int:
    sec, usec = await r.time()
    return int(sec) * 1000 + int(usec) // 1000


def reserve_keys(cid: str) -> list[str]:
    k = keys.CampaignKeys(cid)
    return [k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.events, k.rate,
            k.ratelimit, k.registrations, k.buyers]


def transition_keys(cid: str) -> list[str]:
    k = keys.CampaignKeys(cid)
    return [k.counters, k.users, k.reservations, k.holds, k.events, k.damaged, k.buyers]


async def run_script(r: aioredis.Redis, name: str, keys_: list[str], args: list[Any]) -> Any:
    """EVAL of the script as the engine registers it (includes spliced in)."""
    return await r.eval(source(name), len(keys_), *keys_, *args)


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def stream(r: aioredis.Redis, cid: str) -> list[dict[str, str]]:
    """Every event of a campaign, decoded to str."""
    entries = await r.xrange(keys.CampaignKeys(cid).events)
    return [{text(k): text(v) for k, v in fields.items()} for _, fields in entries]


# Rewrites a hold's deadline (record and zset score) to 1 ms before Redis TIME: lets a test put
# a hold past its deadline without any clock override in the engine's scripts.
OVERDUE_LUA = """
local packed = redis.call('HGET', KEYS[1], ARGV[1])
if not packed then return 0 end
local r = cmsgpack.unpack(packed)
local t = redis.call('TIME')
local past = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 1
r[6] = past
redis.call('HSET', KEYS[1], ARGV[1], cmsgpack.pack(r))
if r[1] == 'held' then redis.call('ZADD', KEYS[2], past, ARGV[1]) end
return past
"""


async def make_overdue(r: aioredis.Redis, cid: str, rid: str) -> int:
    k = keys.CampaignKeys(cid)
    return int(await r.eval(OVERDUE_LUA, 2, k.reservations, k.holds, rid))
