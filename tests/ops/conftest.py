"""Fixtures of the ops tests: an Engine on the private Redis, a campaign after the scripted sale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from engine import keys
from engine.core import Engine
from engine.settings import Settings
from tests.ops.sale import EngineDriver, definition, run_sale

CID = "ops-sale-1"


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
