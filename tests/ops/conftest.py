"""Fixtures of the ops tests: an Engine on the private Redis, a campaign after the scripted sale
(through the Engine, or through a real 2-worker `flashsale serve`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.settings import Settings
from tests.ops.sale import EngineDriver, HttpDriver, definition, run_sale
from tests.support.processes import ApiServer
from tests.support.servers import RedisServer

CID = "ops-sale-1"
API_CID = "ops-api"
API_OTHER = "ops-api-other"


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[Engine]:
    e = Engine.from_settings(Settings(redis_url=redis_url, redis_timeout_s=5.0))
    yield e
    await e.close()


async def next_redis_second(client: aioredis.Redis) -> None:
    """Wait until Redis's clock enters a new second (the rate counts whole seconds only)."""
    start = (await client.time())[0]
    for _ in range(100):
        if (await client.time())[0] != start:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("Redis's clock did not move in 5 s")


async def publish_persisted(client: aioredis.Redis, campaign_id: str, persisted: int) -> None:
    """What the ledger writer publishes after each commit (``fs:{c:ID}:ledger``)."""
    await client.hset(keys.CampaignKeys(campaign_id).ledger, "persisted_orders", persisted)


@pytest.fixture
async def sold(engine: Engine) -> str:
    """The scripted sale done on campaign CID through the Engine; returns the campaign id."""
    driver = EngineDriver(engine, CID)
    await driver.load(definition(CID))
    await run_sale(driver)
    await next_redis_second(engine.redis)
    return CID


def fresh_get(url: str, **kw: object) -> httpx.Response:
    """One request on a new connection: over many of them, both workers get some."""
    with httpx.Client(timeout=10) as c:
        return c.get(url, **kw)  # type: ignore[arg-type]


async def _sale_over_http(base_url: str) -> None:
    # no keep-alive: every request is a new connection, so the two workers share the sale
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as c:
        await HttpDriver(c, API_OTHER).load(definition(API_OTHER))
        d = HttpDriver(c, API_CID)
        await d.load(definition(API_CID))
        await run_sale(d)


@pytest.fixture(scope="module")
def served(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Path]]:
    """Per test module: `flashsale serve --workers 2` on the flushed session Redis, after the
    scripted sale on API_CID (and an untouched API_OTHER); metrics files in the returned dir."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    prom = tmp_path_factory.mktemp("prom")
    server = ApiServer(redis_server.url, workers=2, PROMETHEUS_MULTIPROC_DIR=str(prom)).start()
    try:
        asyncio.run(_sale_over_http(server.url))
        start = client.time()[0]
        while client.time()[0] == start:  # the rate counts whole seconds only
            time.sleep(0.02)
        yield server, prom
    finally:
        client.close()
        server.stop()
