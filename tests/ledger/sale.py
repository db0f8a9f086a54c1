"""Real sales for the ledger tests, driven through the Engine, and what they leave behind."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from engine.campaign import Campaign, ms_to_rfc3339, parse
from engine.core import Engine, ReserveRequest
from engine.core.redis_client import connect_any
from engine.errors import FlashsaleError
from engine.ledger import Writer, WriterSettings, sink_for
from engine.ledger.sink import LedgerSnapshot
from engine.settings import Settings
from tests.support.processes import FLASHSALE

DAY_MS = 86_400_000
PRICE = 10000


def campaign(cid: str, *, total: int = 1_000_000, user_cap: int | None = None, hold_seconds: int = 900,
             products: int = 2) -> Campaign:
    """An open campaign (Redis shares this machine's clock), rate limit out of the way."""
    now = int(time.time() * 1000)
    per = total // products
    d: dict[str, Any] = {
        "id": cid, "title": "账本 test", "currency": "CNY", "unit_price": PRICE,
        "opens_at": ms_to_rfc3339(now - DAY_MS), "closes_at": ms_to_rfc3339(now + DAY_MS),
        "hold_seconds": hold_seconds, "total_units": total,
        "rate_limit": {"per_second": 1_000_000, "burst": 1_000_000},
        "products": [{"id": f"p{i}", "title": f"product {i}", "total_units": per} for i in range(products)],
    }
    if user_cap is not None:
        d["user_cap_units"] = user_cap
    return parse(d)


def engine_for(redis_url: str) -> Engine:
    """The Engine on the Redis ``redis_url`` names: one node, or the cluster of that node."""
    client = cast("aioredis.Redis", connect_any(redis_url, 10.0))
    return Engine(client, Settings(redis_url=redis_url, redis_timeout_s=10.0))


@dataclass
class Sale:
    """What the storefront was told: confirms acknowledged, and the rest."""

    confirmed: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # rid -> (user, product, units)
    held: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    failed: int = 0  # calls that raised (outcome unknown to the storefront)
    events: int = 0  # stream entries the acknowledged calls appended

    @property
    def units(self) -> int:
        return sum(u for _, _, u in self.confirmed.values())


async def sell(engine: Engine, cid: str, n: int, *, start: int = 0, confirm_every: int = 1,
               cancel_every: int = 0, chunk: int = 500, products: int = 2, sale: Sale | None = None,
               tolerate_errors: bool = False) -> Sale:
    """``n`` reservations by distinct users; every ``confirm_every``-th is confirmed, every
    ``cancel_every``-th of the rest cancelled, the others left held."""
    sale = sale or Sale()

    async def one(i: int) -> None:
        uid, pid, units = f"u{i}", f"p{i % products}", 1 + i % 3
        try:
            r = (await engine.reserve(cid, ReserveRequest(uid, pid, units, f"k{i}", "shop-a"))).reservation
        except FlashsaleError:
            if not tolerate_errors:
                raise
            sale.failed += 1
            return
        sale.events += 1
        rid = r.reservation_id
        try:
            if i % confirm_every == 0:
                await engine.confirm(cid, rid, f"pay-{i}", storefront="shop-a")
                sale.confirmed[rid] = (uid, pid, units)
            elif cancel_every and i % cancel_every == 0:
                await engine.cancel(cid, rid, storefront="shop-a")
                sale.cancelled.add(rid)
            else:
                sale.held.add(rid)
                return
        except FlashsaleError:
            if not tolerate_errors:
                raise
            sale.failed += 1
            return
        sale.events += 1

    for s in range(start, start + n, chunk):
        await asyncio.gather(*(one(i) for i in range(s, min(start + n, s + chunk))))
    return sale


async def until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


async def flashsale(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the installed ``flashsale`` command, as an operator would."""
    return await asyncio.to_thread(subprocess.run, [FLASHSALE, *args], env=env, capture_output=True, text=True,
                                   timeout=120)


async def drain(redis_url: str, db_url: str, **settings: Any) -> Writer:
    """One writer in burst mode, in this process: everything in the streams into the ledger."""
    client = connect_any(redis_url, 30.0)
    sink = sink_for(db_url)
    try:
        await sink.open()
        writer = Writer(client, sink, WriterSettings(**{"consumer": "drain", "burst": True, **settings}))
        await writer.run()
        return writer
    finally:
        await sink.close()
        await client.aclose()


async def ledger(db_url: str, cid: str) -> LedgerSnapshot:
    sink = sink_for(db_url)
    try:
        await sink.open()
        return await sink.snapshot(cid)
    finally:
        await sink.close()
