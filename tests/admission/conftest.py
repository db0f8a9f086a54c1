"""Fixtures of the admission tests: a private redis-server, an Engine and the admission service
on it, and queue-mode definitions placed relative to now (Redis shares this machine's clock)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from engine.admission import AdmissionService, Keyring
from engine.campaign import ms_to_rfc3339, parse
from engine.core import Engine
from engine.settings import Settings
from tests.support.servers import RedisServer

KEYS = "k1:" + "s" * 32
HIGH_RATE = {"per_second": 1_000_000, "burst": 1_000_000}


def now_ms() -> int:
    return int(time.time() * 1000)


def definition(cid: str = "c1", *, opens_in_ms: int = -3_600_000, queue_opens_in_ms: int | None = None,
               admit_per_second: int = 1000, token_seconds: int = 600, total_units: int = 100,
               **overrides: Any) -> dict[str, Any]:
    """A queue-mode campaign (unless ``admission`` is overridden) opening ``opens_in_ms`` from now."""
    now = now_ms()
    opens = now + opens_in_ms
    queue_opens = now + (queue_opens_in_ms if queue_opens_in_ms is not None else min(opens_in_ms, 0) - 3_600_000)
    d: dict[str, Any] = {
        "id": cid, "title": "排队 campaign", "currency": "CNY", "unit_price": 10000,
        "opens_at": ms_to_rfc3339(opens), "closes_at": ms_to_rfc3339(now + 86_400_000),
        "hold_seconds": 900, "total_units": total_units, "user_cap_units": 10, "rate_limit": HIGH_RATE,
        "products": [{"id": "p1", "title": "小时代3", "total_units": total_units}],
        "admission": {"mode": "queue", "queue_opens_at": ms_to_rfc3339(min(queue_opens, opens)),
                      "admit_per_second": admit_per_second, "token_seconds": token_seconds},
    }
    d.update(overrides)
    return d


@pytest.fixture(scope="package")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[Engine]:
    e = Engine.from_settings(Settings(redis_url=redis_url, redis_timeout_s=10.0))
    yield e
    await e.close()


@pytest.fixture
def admission(engine: Engine) -> AdmissionService:
    return AdmissionService(engine, Keyring.parse(KEYS))


async def load(engine: Engine, **kw: Any) -> str:
    d = definition(**kw)
    await engine.load_campaign(parse(d))
    return str(d["id"])
