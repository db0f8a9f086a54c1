"""Fixtures for the API tests: one real `flashsale serve` on the session's private Redis.

Tests share the server and keep out of each other's way by creating their own campaign, with a
fresh id, through the API itself (``new_campaign``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.processes import ApiServer, admin_headers, storefront_headers
from tests.support.servers import RedisServer

Json = dict[str, Any]


def definition(cid: str, *, opens_in_s: int = -3600, closes_in_s: int = 86400, total_units: int | None = 100,
               user_cap_units: int | None = 10, products: list[Json] | None = None,
               rate_limit: Json | None = None, hold_seconds: int = 900) -> Json:
    """A campaign definition, open now unless told otherwise; a high rate limit unless told otherwise."""
    now = datetime.now(UTC)
    d: Json = {
        "id": cid, "title": "娱乐宝 测试", "currency": "CNY", "unit_price": 10000,
        "opens_at": (now + timedelta(seconds=opens_in_s)).isoformat(),
        "closes_at": (now + timedelta(seconds=closes_in_s)).isoformat(),
        "hold_seconds": hold_seconds,
        "products": products or [{"id": "p1", "title": "小时代3", "total_units": 60, "user_cap_units": 5},
                                 {"id": "p2", "title": "狼图腾", "total_units": 60}],
        "rate_limit": rate_limit or {"per_second": 100_000, "burst": 100_000},
    }
    if total_units is not None:
        d["total_units"] = total_units
    if user_cap_units is not None:
        d["user_cap_units"] = user_cap_units
    return d


def new_id(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The API tests' own private Redis, overriding the session one: the shared API server runs an
    expiry sweeper for the whole session, which must never touch another area's data."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api_server(redis_server: RedisServer) -> Iterator[ApiServer]:
    server = ApiServer(redis_server.url).start()
    yield server
    server.stop()


@pytest.fixture
def client(api_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_server.url, timeout=10) as c:
        yield c


@pytest.fixture
def new_campaign(client: httpx.Client) -> Callable[..., str]:
    """Create a campaign through the API (201) and return its id; keyword arguments as ``definition``."""

    def make(**kw: Any) -> str:
        cid = new_id()
        r = client.put(f"/v1/campaigns/{cid}", json=definition(cid, **kw), headers=admin_headers())
        assert r.status_code == 201, r.text
        return cid

    return make


def reserve(client: httpx.Client, cid: str, *, user: str = "u1", product: str = "p1", units: int = 1,
            key: str | None = None, shop: str = "shop-a") -> httpx.Response:
    return client.post(f"/v1/campaigns/{cid}/reservations",
                       json={"user_id": user, "product_id": product, "units": units},
                       headers=storefront_headers(shop, key or uuid.uuid4().hex))


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert r.headers["content-type"] == "application/json"
    return str(body["error"]["code"])
