"""The Engine: flashsale's Python API over the Lua scripts. No HTTP, no SQL here.

    engine = Engine(settings)            # or Engine.from_client(client)
    await engine.start()                 # register scripts
    outcome = await engine.reserve(cid, ReserveRequest(user_id, product_id, units, key, storefront))
    await engine.confirm(cid, outcome.reservation.reservation_id, "pay-123")

Every method raises a ``Rejected`` subclass for a business refusal and ``StorageUnavailable``
when Redis cannot answer in time; the caller may retry with the same Idempotency-Key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine import keys
from engine.campaign import Campaign, parse
from engine.core.batcher import Batcher
from engine.core.redis_client import connect
from engine.core.results import CampaignView, Counters, Holdings, Outcome, ProductHolding, Reservation
from engine.core.scripts import Scripts
from engine.errors import NotFound, StorageUnavailable, rejection
from engine.settings import Settings

RESERVE_STRIDE_IN = 6
RESERVE_STRIDE_OUT = 4


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    user_id: str
    product_id: str
    units: int
    idempotency_key: str
    storefront: str


def new_reservation_id() -> str:
    """96 random bits, base32: unique across campaigns (the ledger's primary key)."""
    return base64.b32encode(os.urandom(15)).decode().lower()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _now_ms(t: Sequence[int]) -> int:
    return int(t[0]) * 1000 + int(t[1]) // 1000


@asynccontextmanager
async def _storage(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StorageUnavailable(f"Redis did not answer {what}: {exc.__class__.__name__}: {exc}; "
                                 "retry with the same Idempotency-Key") from exc


class Engine:
    def __init__(self, client: aioredis.Redis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.redis = client
        self.scripts = Scripts.register(client)
        self._batchers: dict[str, Batcher] = {}
        self._definitions: dict[bytes, Campaign] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        return cls(connect(settings.redis_url, settings.redis_timeout_s), settings)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ready(self) -> bool:
        """Redis answers and every script is in its cache (loading them if not)."""
        async with _storage("a readiness check"):
            if not await self.scripts.loaded(self.redis):
                await self.scripts.preload(self.redis)
            return True

    # -- campaigns -------------------------------------------------------------------------

    async def load_campaign(self, campaign: Campaign) -> bool:
        """Create (True) or replace (False) a campaign that has not opened yet."""
        k = keys.CampaignKeys(campaign.id)
        argv: list[Any] = [
            orjson.dumps(campaign.to_dict()), campaign.opens_at_ms, campaign.closes_at_ms,
            campaign.hold_seconds * 1000, campaign.unit_price, campaign.total_units,
            campaign.user_cap_units or 0, campaign.rate_limit.per_second, campaign.rate_limit.burst,
            len(campaign.products),
        ]
        for p in campaign.products:
            argv += [p.id, p.total_units, p.user_cap_units or 0]
        async with _storage("loading a campaign"):
            code, detail = await self.scripts.load(
                keys=[k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.rate,
                      k.ratelimit], args=argv)
            if code != 0:
                raise rejection(code, _text(detail), campaign.id)
            await cast("Awaitable[int]", self.redis.sadd(keys.CAMPAIGNS, campaign.id))
        self._batchers.pop(campaign.id, None)
        return bool(detail)

    async def campaign_ids(self) -> list[str]:
        async with _storage("listing campaigns"):
            return sorted(_text(c) for c in await cast("Awaitable[set[bytes]]", self.redis.smembers(keys.CAMPAIGNS)))

    def _definition(self, raw: bytes) -> Campaign:
        c = self._definitions.get(raw)
        if c is None:
            c = self._definitions[raw] = parse(orjson.loads(raw))
        return c

    async def view(self, campaign_id: str) -> CampaignView:
        k = keys.CampaignKeys(campaign_id)
        async with _storage("reading a campaign"), self.redis.pipeline(transaction=False) as p:
            p.hmget(k.meta, ["def", "flag"])
            p.time()
            (raw, flag), t = await p.execute()
        if raw is None:
            raise NotFound("campaign", campaign_id)
        return CampaignView(self._definition(raw), _text(flag), _now_ms(t))

    async def _admin(self, campaign_id: str, action: str) -> str:
        async with _storage(f"{action} of a campaign"):
            code, flag = await self.scripts.admin(keys=[keys.CampaignKeys(campaign_id).meta], args=[action])
        if code != 0:
            raise rejection(code, _text(flag), campaign_id)
        return _text(flag)

    async def pause(self, campaign_id: str) -> str:
        return await self._admin(campaign_id, "pause")

    async def resume(self, campaign_id: str) -> str:
        return await self._admin(campaign_id, "resume")

    async def close_campaign(self, campaign_id: str) -> str:
        return await self._admin(campaign_id, "close")

    async def set_recovering(self, campaign_id: str, recovering: bool) -> str:
        return await self._admin(campaign_id, "recovering" if recovering else "recovered")

    # -- reservations ----------------------------------------------------------------------

    def _batcher(self, campaign_id: str) -> Batcher:
        b = self._batchers.get(campaign_id)
        if b is None:
            k = keys.CampaignKeys(campaign_id)
            ks = [k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.events,
                  k.rate, k.ratelimit]
            script = self.scripts.reserve

            async def call(argv: list[Any]) -> Sequence[Any]:
                result: Sequence[Any] = await script(keys=ks, args=argv)
                return result

            b = self._batchers[campaign_id] = Batcher(
                call, stride_in=RESERVE_STRIDE_IN, stride_out=RESERVE_STRIDE_OUT,
                max_batch=self.settings.batch_max, max_inflight=self.settings.batch_inflight)
        return b

    async def reserve(self, campaign_id: str, req: ReserveRequest) -> Outcome:
        """Hold ``units`` of a product for a user, or raise the rejection. Batched per campaign."""
        rid = new_reservation_id()
        fut = self._batcher(campaign_id).submit(
            (rid, req.storefront, req.idempotency_key, req.user_id, req.product_id, req.units))
        async with _storage("a reservation"):
            code, detail, packed, replayed = await fut
        if code != 0:
            raise rejection(code, _text(detail), campaign_id)
        rid = _text(detail)
        return Outcome(Reservation.unpack(campaign_id, rid, packed), bool(replayed))

    async def reserve_unbatched(self, campaign_id: str, req: ReserveRequest) -> Outcome:
        """One script call per request: the naive baseline the benchmarks compare against."""
        k = keys.CampaignKeys(campaign_id)
        argv: list[Any] = [1, new_reservation_id(), req.storefront, req.idempotency_key, req.user_id,
                req.product_id, req.units]
        async with _storage("a reservation"):
            code, detail, packed, replayed = await self.scripts.reserve(
                keys=[k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.events,
                      k.rate, k.ratelimit], args=argv)
        if code != 0:
            raise rejection(code, _text(detail), campaign_id)
        return Outcome(Reservation.unpack(campaign_id, _text(detail), packed), bool(replayed))

    def _transition_keys(self, campaign_id: str) -> list[str]:
        k = keys.CampaignKeys(campaign_id)
        return [k.counters, k.users, k.reservations, k.holds, k.events]

    async def _transition(self, campaign_id: str, script: Any, args: list[Any], what: str) -> Outcome:
        async with _storage(what):
            code, detail, packed, replayed = await script(keys=self._transition_keys(campaign_id), args=args)
        if code != 0:
            raise rejection(code, _text(detail), f"reservation {args[0]!r}")
        return Outcome(Reservation.unpack(campaign_id, _text(detail), packed), bool(replayed))

    async def confirm(self, campaign_id: str, reservation_id: str, payment_ref: str) -> Outcome:
        """Payment succeeded: the hold becomes an order. Idempotent for the same payment_ref."""
        return await self._transition(campaign_id, self.scripts.confirm, [reservation_id, payment_ref],
                                      "a confirm")

    async def cancel(self, campaign_id: str, reservation_id: str) -> Outcome:
        """Release a hold. Idempotent."""
        return await self._transition(campaign_id, self.scripts.cancel, [reservation_id], "a cancel")

    async def expire_due(self, campaign_id: str, limit: int = 1000) -> tuple[int, bool]:
        """Expire holds past their deadline; returns (expired, more are waiting)."""
        async with _storage("expiring holds"):
            expired, more = await self.scripts.expire(keys=self._transition_keys(campaign_id), args=[limit])
        return int(expired), bool(more)

    async def reservation(self, campaign_id: str, reservation_id: str) -> Reservation:
        k = keys.CampaignKeys(campaign_id)
        async with _storage("reading a reservation"), self.redis.pipeline(transaction=False) as p:
            p.hget(k.reservations, reservation_id)
            p.time()
            packed, t = await p.execute()
        if packed is None:
            raise NotFound("reservation", reservation_id)
        return Reservation.unpack(campaign_id, reservation_id, packed).seen_at(_now_ms(t))

    async def holdings(self, campaign_id: str, user_id: str) -> Holdings:
        """A user's held and confirmed units, per product and in all."""
        view = await self.view(campaign_id)
        pids = [p.id for p in view.campaign.products]
        fields = [f"t|{user_id}", f"c|{user_id}"]
        for pid in pids:
            fields += [f"t|{user_id}|{pid}", f"c|{user_id}|{pid}"]
        async with _storage("reading a user's holdings"):
            users = keys.CampaignKeys(campaign_id).users
            raw = await cast("Awaitable[list[bytes | None]]", self.redis.hmget(users, fields))
        vals = [int(v or 0) for v in raw]
        products = tuple(ProductHolding(pid, vals[2 + 2 * i] - vals[3 + 2 * i], vals[3 + 2 * i])
                         for i, pid in enumerate(pids))
        return Holdings(campaign_id, user_id, vals[0] - vals[1], vals[1], products)

    async def counters(self, campaign_id: str) -> Counters:
        """Everything the scripts count for a campaign, in one round trip (no key scans)."""
        k = keys.CampaignKeys(campaign_id)
        async with _storage("reading counters"), self.redis.pipeline(transaction=False) as p:
            p.hmget(k.meta, ["def", "flag"])
            p.hgetall(k.counters)
            p.hgetall(k.rate)
            p.hget(k.ledger, "persisted_orders")
            p.time()
            (raw, flag), counters, ring, persisted, t = await p.execute()
        if raw is None:
            raise NotFound("campaign", campaign_id)
        now = _now_ms(t)
        view = CampaignView(self._definition(raw), _text(flag), now)
        c = {_text(f): int(v) for f, v in counters.items()}
        r = {_text(f): int(v) for f, v in ring.items()}
        sec = now // 1000
        last_minute = sum(r.get(f"u{slot[1:]}", 0) for slot, s in r.items()
                          if slot.startswith("s") and sec - 60 <= s < sec)
        pids = [p.id for p in view.campaign.products]
        return Counters(
            view=view, sold=c.get("sold", 0), held=c.get("held", 0), orders=c.get("orders", 0),
            buyers=c.get("buyers", 0),
            product_sold={pid: c.get(f"sold|{pid}", 0) for pid in pids},
            product_held={pid: c.get(f"held|{pid}", 0) for pid in pids},
            rejections={f[4:]: v for f, v in c.items() if f.startswith("rej|")},
            taken_last_minute=last_minute,
            persisted_orders=int(persisted or 0),
        )
