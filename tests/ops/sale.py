"""A small scripted sale whose every figure is known in advance, driven through the Engine or HTTP.

Campaign: a tranche of 60 units, ``alpha`` (40 units, at most 5 per user) and ``beta`` (40 units),
at most 10 units per user in all. The script fills the tranche, confirms six holds, cancels one,
and meets each reserve rejection the counters keep on the way. ``EXPECTED`` is what stats must
say afterwards (before any hold expires: holds last an hour).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from engine.campaign import parse
from engine.core import Engine, ReserveRequest
from engine.errors import Rejected
from tests.support.processes import admin_headers, storefront_headers

ALPHA, BETA = "alpha", "beta"


def definition(campaign_id: str, *, rate_per_second: int = 1000, burst: int = 1000) -> dict[str, Any]:
    now = time.time()
    iso = lambda t: datetime.fromtimestamp(t, tz=UTC).isoformat()  # noqa: E731
    return {
        "id": campaign_id, "title": f"Ops test {campaign_id}", "currency": "CNY", "unit_price": 10000,
        "opens_at": iso(now - 60), "closes_at": iso(now + 3600), "hold_seconds": 3600,
        "total_units": 60, "user_cap_units": 10,
        "rate_limit": {"per_second": rate_per_second, "burst": burst},
        "products": [{"id": ALPHA, "title": "Alpha 阿尔法", "total_units": 40, "user_cap_units": 5},
                     {"id": BETA, "title": "Beta", "total_units": 40}],
    }


@dataclass(frozen=True)
class Expected:
    sold: int = 35
    held: int = 23
    remaining: int = 2
    orders: int = 6
    buyers: int = 6
    taken: int = 63  # units reserved, whatever became of them
    rejections: dict[str, int] = field(default_factory=lambda: {
        "USER_CAP_EXCEEDED": 2, "SOLD_OUT": 2, "INSUFFICIENT_STOCK": 1, "IDEMPOTENCY_KEY_REUSED": 1})
    outcomes: dict[tuple[str, str], int] = field(default_factory=lambda: {
        ("reserve", "OK"): 11, ("reserve", "USER_CAP_EXCEEDED"): 2, ("reserve", "SOLD_OUT"): 2,
        ("reserve", "INSUFFICIENT_STOCK"): 1, ("reserve", "IDEMPOTENCY_KEY_REUSED"): 1,
        ("confirm", "OK"): 6, ("cancel", "OK"): 1})
    # product: (sold, held, remaining, total)
    products: dict[str, tuple[int, int, int, int]] = field(default_factory=lambda: {
        ALPHA: (25, 13, 2, 40), BETA: (10, 10, 2, 40)})


EXPECTED = Expected()


class Driver(Protocol):
    async def load(self, definition: dict[str, Any]) -> None: ...
    async def reserve(self, user: str, product: str, units: int, key: str) -> tuple[str, str]: ...
    async def confirm(self, rid: str) -> str: ...
    async def cancel(self, rid: str) -> str: ...


class EngineDriver:
    def __init__(self, engine: Engine, campaign_id: str) -> None:
        self.engine, self.cid = engine, campaign_id

    async def load(self, definition: dict[str, Any]) -> None:
        await self.engine.load_campaign(parse(definition))

    async def reserve(self, user: str, product: str, units: int, key: str) -> tuple[str, str]:
        try:
            out = await self.engine.reserve(self.cid, ReserveRequest(user, product, units, key, "shop-a"))
        except Rejected as exc:
            return exc.code, ""
        return "OK", out.reservation.reservation_id

    async def confirm(self, rid: str) -> str:
        try:
            await self.engine.confirm(self.cid, rid, f"pay-{rid}", storefront="shop-a")
        except Rejected as exc:
            return exc.code
        return "OK"

    async def cancel(self, rid: str) -> str:
        try:
            await self.engine.cancel(self.cid, rid, storefront="shop-a")
        except Rejected as exc:
            return exc.code
        return "OK"


class HttpDriver:
    """The same calls through a running API, as a storefront makes them."""

    def __init__(self, client: httpx.AsyncClient, campaign_id: str) -> None:
        self.client, self.cid = client, campaign_id

    @staticmethod
    def _code(res: httpx.Response) -> str:
        if res.status_code in (200, 201):
            return "OK"
        return str(res.json()["error"]["code"])

    async def load(self, definition: dict[str, Any]) -> None:
        res = await self.client.put(f"/v1/campaigns/{self.cid}", json=definition, headers=admin_headers())
        assert res.status_code in (200, 201), res.text

    async def reserve(self, user: str, product: str, units: int, key: str) -> tuple[str, str]:
        res = await self.client.post(f"/v1/campaigns/{self.cid}/reservations",
                                     json={"user_id": user, "product_id": product, "units": units},
                                     headers=storefront_headers("shop-a", key))
        code = self._code(res)
        return code, res.json()["reservation_id"] if code == "OK" else ""

    async def confirm(self, rid: str) -> str:
        res = await self.client.post(f"/v1/campaigns/{self.cid}/reservations/{rid}/confirm",
                                     json={"payment_ref": f"pay-{rid}"}, headers=storefront_headers())
        return self._code(res)

    async def cancel(self, rid: str) -> str:
        res = await self.client.post(f"/v1/campaigns/{self.cid}/reservations/{rid}/cancel",
                                     headers=storefront_headers())
        return self._code(res)


async def run_sale(d: Driver) -> None:
    """Drive the script; each step's outcome is asserted as it happens."""

    async def reserve(user: str, product: str, units: int, want: str, key: str | None = None) -> str:
        code, rid = await d.reserve(user, product, units, key or uuid.uuid4().hex)
        assert code == want, f"reserve {user} {product} {units}: {code}, expected {want}"
        return rid

    alpha = [await reserve(f"u{i}", ALPHA, 5, "OK") for i in range(8)]  # alpha fully held
    await reserve("u0", ALPHA, 1, "USER_CAP_EXCEEDED")  # 5 per user for alpha
    await reserve("u8", ALPHA, 1, "SOLD_OUT")
    beta8 = await reserve("u8", BETA, 10, "OK")
    await reserve("u9", BETA, 10, "OK")  # the tranche of 60 is taken
    await reserve("u10", BETA, 1, "SOLD_OUT")
    await reserve("u0", BETA, 6, "USER_CAP_EXCEEDED")  # 10 per user in all; u0 holds 5
    for rid in [*alpha[:5], beta8]:
        assert await d.confirm(rid) == "OK"
    assert await d.cancel(alpha[5]) == "OK"  # 5 units of alpha return
    await reserve("u11", ALPHA, 3, "OK", key="k-u11")
    await reserve("u12", ALPHA, 3, "INSUFFICIENT_STOCK")  # 2 left
    await reserve("u11", ALPHA, 2, "IDEMPOTENCY_KEY_REUSED", key="k-u11")
