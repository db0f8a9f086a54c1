"""The Engine: flashsale's Python API over the Lua scripts. No HTTP, no SQL here.

    engine = Engine.from_settings(settings)      # or Engine(redis_client, settings)
    await engine.ready()                         # Redis answers, scripts loaded
    outcome = await engine.reserve(cid, ReserveRequest(user_id, product_id, units, key, storefront))
    await engine.confirm(cid, outcome.reservation.reservation_id, "pay-123", storefront="shop")

Reserve, confirm and cancel are micro-batched per campaign (``calls.py``): concurrent requests
share one script call, each still judged on its own, in arrival order. Every method raises a
``Rejected`` subclass for a business refusal (``InvalidRequest`` for a malformed field, before
anything reaches Redis) and ``StorageUnavailable`` when Redis cannot answer in time (unreachable,
timing out, loading, read-only or failing over: ``engine.core.outage``); the caller may retry with
the same Idempotency-Key. Any other error Redis answers (a Lua script's runtime error: a bug or
damaged data) propagates as redis-py's ``ResponseError``, never as ``StorageUnavailable``: a retry
would meet it again. The API answers it 500 ``INTERNAL``.

A reservation belongs to the storefront that made it: ``reservation``, ``confirm`` and ``cancel``
take the caller's storefront and answer ``NotFound`` for another's, exactly as for an unknown id
(the scripts compare it with the record's); ``holdings`` counts only the caller's units. A stored
record no script can read raises ``DamagedRecord`` (logged once, when it is set aside).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import msgpack
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine import keys
from engine.campaign import Campaign, parse
from engine.core.calls import BatchedScript
from engine.core.lru import Lru
from engine.core.outage import OUTAGE_CLASSES, is_outage
from engine.core.redis_client import connect_any
from engine.core.requests import (
    ReserveRequest,
    check_payment_ref,
    check_reserve,
    check_storefront,
    gate_of,
    new_reservation_id,
)
from engine.core.results import CampaignView, Counters, Holdings, Outcome, Reservation
from engine.core.scripts import Scripts, run
from engine.core.wire import Wire
from engine.errors import DamagedRecord, NotFound, StorageUnavailable, rejection
from engine.settings import Settings
from engine.status import Status

__all__ = ["Engine", "ReserveRequest", "new_reservation_id"]

RESERVE_STRIDE_IN = 7  # values per request in reserve.lua's ARGV
CONFIRM_STRIDE_IN = 3  # reservation id, storefront, payment reference
CANCEL_STRIDE_IN = 2  # reservation id, storefront
STRIDE_OUT = 4  # reply values per request, every batched script
DEFINITIONS_KEPT = 1024  # parsed campaign definitions an Engine caches (least recently used go)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _now_ms(t: Sequence[int]) -> int:
    return int(t[0]) * 1000 + int(t[1]) // 1000


def _reserve_keys(campaign_id: str) -> list[str]:
    k = keys.CampaignKeys(campaign_id)
    return [k.meta, k.counters, k.users, k.reservations, k.idempotency, k.holds, k.events, k.rate,
            k.ratelimit, k.registrations, k.buyers]


def _transition_keys(campaign_id: str) -> list[str]:
    k = keys.CampaignKeys(campaign_id)
    return [k.counters, k.users, k.reservations, k.holds, k.events, k.damaged, k.buyers]


def load_args(campaign: Campaign) -> list[Any]:
    """``load.lua``'s ARGV for a definition (its v1.1 block only when the campaign uses v1.1)."""
    argv: list[Any] = [
        orjson.dumps(campaign.to_dict()), campaign.opens_at_ms, campaign.closes_at_ms,
        campaign.hold_seconds * 1000, campaign.unit_price, campaign.total_units,
        campaign.user_cap_units or 0, campaign.rate_limit.per_second, campaign.rate_limit.burst,
        len(campaign.products),
    ]
    for p in campaign.products:
        argv += [p.id, p.total_units, p.user_cap_units or 0]
    caps = (campaign.identity_cap_units, campaign.device_cap_units, campaign.network_cap_units)
    if any(caps) or campaign.eligibility != "anyone" or campaign.queued:
        argv += [c or 0 for c in caps]
        argv += [campaign.eligibility, "queue" if campaign.queued else "open"]
    return argv


log = logging.getLogger("flashsale.engine")

STORAGE_ERRORS = OUTAGE_CLASSES  # Redis away: StorageUnavailable (503); a script error is no outage


def _unavailable(what: str, exc: BaseException) -> StorageUnavailable:
    return StorageUnavailable(f"Redis did not answer {what}: {exc.__class__.__name__}: {exc}; "
                              "retry with the same Idempotency-Key")


@asynccontextmanager
async def _storage(what: str) -> AsyncIterator[None]:
    try:
        yield
    except STORAGE_ERRORS as exc:
        raise _unavailable(what, exc) from exc
    except ResponseError as exc:  # MASTERDOWN and the like come as plain error replies
        if is_outage(exc):
            raise _unavailable(what, exc) from exc
        raise


async def _reply(fut: Awaitable[Sequence[Any]], what: str) -> Sequence[Any]:
    """Await a batched call's reply (the hot path: no context manager around it)."""
    try:
        return await fut
    except STORAGE_ERRORS as exc:
        raise _unavailable(what, exc) from exc
    except ResponseError as exc:
        if is_outage(exc):
            raise _unavailable(what, exc) from exc
        raise


def _set_aside(campaign_id: str, reservation_id: str, during: str) -> None:
    """The one log line of a damaged record, when a script sets it aside."""
    log.error("damaged reservation record set aside", extra={
        "campaign_id": campaign_id, "reservation_id": reservation_id, "during": during})


def _owner(packed: bytes) -> str | None:
    """The storefront a damaged record still names, if that much of it can be read."""
    try:
        r = msgpack.unpackb(packed, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return r[7] if isinstance(r, list) and len(r) > 7 and isinstance(r[7], str) else None


def _outcome(campaign_id: str, reply: Sequence[Any], subject: str, during: str = "") -> Outcome:
    code, detail, packed, replayed = reply
    if code == Status.DAMAGED_RECORD:
        if not replayed:  # replayed: it was set aside, and logged, before
            _set_aside(campaign_id, _text(detail), during)
        raise DamagedRecord(campaign_id, _text(detail))
    if code != 0:
        raise rejection(code, _text(detail), subject)
    return Outcome(Reservation.unpack(campaign_id, _text(detail), packed), bool(replayed))


class Engine:
    def __init__(self, client: aioredis.Redis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.redis = client
        self.scripts = Scripts.register(client)
        self.wire = Wire.for_client(client, self.settings.redis_timeout_s)
        # Only campaigns that exist are cached (a NotFound caches nothing and drops the id), and
        # both caches are bounded: a caller sending random campaign ids costs no memory here.
        self._definitions: Lru[bytes, Campaign] = Lru(DEFINITIONS_KEPT)  # parsed, by stored JSON
        self._known: Lru[str, tuple[bytes, Campaign]] = Lru(DEFINITIONS_KEPT)  # id -> last-read definition
        sizes = {"stride_out": STRIDE_OUT, "max_batch": self.settings.batch_max,
                 "max_inflight": self.settings.batch_inflight}
        self._reserve = BatchedScript(self.scripts.reserve, self.wire, _reserve_keys,
                                      stride_in=RESERVE_STRIDE_IN, **sizes)
        self._confirm = BatchedScript(self.scripts.confirm, self.wire, _transition_keys,
                                      stride_in=CONFIRM_STRIDE_IN, **sizes)
        self._cancel = BatchedScript(self.scripts.cancel, self.wire, _transition_keys,
                                     stride_in=CANCEL_STRIDE_IN, **sizes)

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        # a cluster client where the URL names a cluster node (redis-py routes each script by its slot)
        return cls(cast("aioredis.Redis", connect_any(settings.redis_url, settings.redis_timeout_s)), settings)

    async def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
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
        argv = load_args(campaign)
        async with _storage("loading a campaign"):
            code, detail = await run(self.scripts.load, [k.meta, k.counters, k.users, k.reservations,
                                                         k.idempotency, k.holds, k.rate, k.ratelimit], argv)
            if code != 0:
                raise rejection(code, _text(detail), campaign.id)
            await cast("Awaitable[int]", self.redis.sadd(keys.CAMPAIGNS, campaign.id))
        return bool(detail)

    async def campaign_ids(self) -> list[str]:
        async with _storage("listing campaigns"):
            return sorted(_text(c) for c in await cast("Awaitable[set[bytes]]", self.redis.smembers(keys.CAMPAIGNS)))

    def _definition(self, raw: bytes, campaign_id: str) -> Campaign:
        c = self._definitions.get(raw)
        if c is None:
            c = parse(orjson.loads(raw))
            self._definitions.put(raw, c)
        self._known.put(campaign_id, (raw, c))
        return c

    def _not_found(self, campaign_id: str) -> NotFound:
        self._known.pop(campaign_id)  # gone (or never there): nothing of it stays cached
        return NotFound("campaign", campaign_id)

    def cache_sizes(self) -> dict[str, int]:
        """How many entries each per-campaign structure of this Engine holds now."""
        return {"definitions": len(self._definitions), "known": len(self._known),
                "reserve_batchers": len(self._reserve), "confirm_batchers": len(self._confirm),
                "cancel_batchers": len(self._cancel)}

    async def view(self, campaign_id: str) -> CampaignView:
        k = keys.CampaignKeys(campaign_id)
        async with _storage("reading a campaign"), self.redis.pipeline(transaction=False) as p:
            p.hmget(k.meta, ["def", "flag"])
            p.execute_command("TIME")  # a cluster pipeline refuses its time method, not the command
            (raw, flag), t = await p.execute()
        if raw is None:
            raise self._not_found(campaign_id)
        return CampaignView(self._definition(raw, campaign_id), _text(flag), _now_ms(t))

    async def _admin(self, campaign_id: str, action: str) -> str:
        async with _storage(f"{action} of a campaign"):
            code, flag = await run(self.scripts.admin, [keys.CampaignKeys(campaign_id).meta], [action])
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

    async def reserve(self, campaign_id: str, req: ReserveRequest) -> Outcome:
        """Hold ``units`` of a product for a user, or raise the rejection. Batched per campaign.

        The same (storefront, Idempotency-Key) with the same body returns the first reservation
        as it is now (``replayed``); with another body it raises ``IdempotencyKeyReused``.
        """
        check_reserve(req)
        fut = self._reserve.submit(campaign_id, (new_reservation_id(), req.storefront, req.idempotency_key,
                                                 req.user_id, req.product_id, req.units, gate_of(req)))
        return _outcome(campaign_id, await _reply(fut, "a reservation"), campaign_id, "reserve")

    async def reserve_unbatched(self, campaign_id: str, req: ReserveRequest) -> Outcome:
        """One redis-py script call per request: the naive baseline the benchmarks compare against."""
        check_reserve(req)
        argv: list[Any] = [1, new_reservation_id(), req.storefront, req.idempotency_key, req.user_id,
                           req.product_id, req.units, gate_of(req)]
        async with _storage("a reservation"):
            reply = await run(self.scripts.reserve, _reserve_keys(campaign_id), argv)
        return _outcome(campaign_id, reply, campaign_id, "reserve")

    async def confirm(self, campaign_id: str, reservation_id: str, payment_ref: str, *,
                      storefront: str) -> Outcome:
        """Payment succeeded: the hold becomes an order. Idempotent for the same payment_ref;
        another payment_ref on a confirmed reservation, or a cancelled or expired one, raises
        ``InvalidState``. A hold inside its deadline may be paid even after the campaign was
        paused or closed: the kill switch stops new reservations, not the ones it promised.
        Another storefront's reservation raises ``NotFound``, as an unknown id does.
        Batched per campaign."""
        check_payment_ref(payment_ref)
        check_storefront(storefront)
        fut = self._confirm.submit(campaign_id, (reservation_id, storefront, payment_ref))
        reply = await _reply(fut, "a confirm")
        return _outcome(campaign_id, reply, f"reservation {reservation_id!r}", "confirm")

    async def cancel(self, campaign_id: str, reservation_id: str, *, storefront: str) -> Outcome:
        """Release a hold. Idempotent; a confirmed or expired reservation raises ``InvalidState``;
        another storefront's reservation raises ``NotFound``, as an unknown id does."""
        check_storefront(storefront)
        fut = self._cancel.submit(campaign_id, (reservation_id, storefront))
        reply = await _reply(fut, "a cancel")
        return _outcome(campaign_id, reply, f"reservation {reservation_id!r}", "cancel")

    async def expire_due(self, campaign_id: str, limit: int = 1000) -> tuple[int, bool]:
        """Expire holds past their deadline; returns (expired, more are waiting). A damaged
        record among them is set aside by the script (logged here) and never stalls the sweep."""
        async with _storage("expiring holds"):
            expired, more, *damaged = await run(self.scripts.expire, _transition_keys(campaign_id), [limit])
        for rid in damaged:
            _set_aside(campaign_id, _text(rid), "expire")
        return int(expired), bool(more)

    async def campaigns_due(self, campaign_ids: Sequence[str]) -> list[str]:
        """The campaigns among these with a hold at or past its deadline, by Redis ``TIME``: one
        round trip reads each holds zset's earliest deadline. A campaign whose holds key cannot
        be read is listed too, so that ``expire_due`` reports its trouble."""
        if not campaign_ids:
            return []
        async with _storage("looking for due holds"):
            async with self.redis.pipeline(transaction=False) as p:
                p.execute_command("TIME")  # a cluster pipeline refuses its time method, not the command
                for cid in campaign_ids:
                    p.zrange(keys.CampaignKeys(cid).holds, 0, 0, withscores=True)
                t, *firsts = await p.execute(raise_on_error=False)
            if isinstance(t, Exception):
                raise t
        now = _now_ms(t)
        return [cid for cid, first in zip(campaign_ids, firsts, strict=True)
                if isinstance(first, Exception) or (first and first[0][1] <= now)]

    async def reservation(self, campaign_id: str, reservation_id: str, *, storefront: str) -> Reservation:
        """One reservation as it is now; ``NotFound`` for an unknown id or another storefront's."""
        check_storefront(storefront)
        k = keys.CampaignKeys(campaign_id)
        async with _storage("reading a reservation"), self.redis.pipeline(transaction=False) as p:
            p.hget(k.reservations, reservation_id)
            p.execute_command("TIME")  # a cluster pipeline refuses its time method, not the command
            packed, t = await p.execute()
        if packed is None:
            raise NotFound("reservation", reservation_id)
        try:
            r = Reservation.unpack(campaign_id, reservation_id, packed)
        except (ValueError, TypeError, msgpack.UnpackException):
            if _owner(packed) not in (None, storefront):  # as the scripts do: another's is unknown
                raise NotFound("reservation", reservation_id) from None
            raise DamagedRecord(campaign_id, reservation_id) from None
        if r.storefront != storefront:
            raise NotFound("reservation", reservation_id)
        return r.seen_at(_now_ms(t))

    async def holdings(self, campaign_id: str, user_id: str, *, storefront: str) -> Holdings:
        """The units the storefront's reservations hold and confirmed for a user, per product and
        in all (caps count the user's units through every storefront; this shows one's own).
        One round trip when this engine has read the campaign before: its definition is checked
        in the same pipeline."""
        check_storefront(storefront)
        k = keys.CampaignKeys(campaign_id)
        known = self._known.get(campaign_id)
        async with _storage("reading a user's holdings"):
            if known is not None:
                async with self.redis.pipeline(transaction=False) as p:
                    p.hget(k.meta, "def")
                    p.hmget(k.users, Holdings.fields(known[1], user_id, storefront))
                    raw_def, vals = await p.execute()
                if raw_def == known[0]:
                    return Holdings.from_values(known[1], user_id, vals)
            raw_def = await cast("Awaitable[bytes | None]", self.redis.hget(k.meta, "def"))
            if raw_def is None:
                raise self._not_found(campaign_id)
            c = self._definition(raw_def, campaign_id)
            vals = await cast("Awaitable[list[bytes | None]]",
                              self.redis.hmget(k.users, Holdings.fields(c, user_id, storefront)))
        return Holdings.from_values(c, user_id, vals)

    async def counters(self, campaign_id: str) -> Counters:
        """Everything the scripts count for a campaign, in one round trip (no key scans)."""
        k = keys.CampaignKeys(campaign_id)
        async with _storage("reading counters"), self.redis.pipeline(transaction=False) as p:
            p.hmget(k.meta, ["def", "flag"])
            p.hgetall(k.counters)
            p.hgetall(k.rate)
            p.hget(k.ledger, "persisted_orders")
            p.execute_command("TIME")  # a cluster pipeline refuses its time method, not the command
            (raw, flag), counters, ring, persisted, t = await p.execute()
        if raw is None:
            raise self._not_found(campaign_id)
        now = _now_ms(t)
        view = CampaignView(self._definition(raw, campaign_id), _text(flag), now)
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
            damaged=c.get("damaged", 0),
        )
