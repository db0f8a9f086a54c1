"""The core's keys as the rest of the engine reads them: typed reads, one Redis command each.

The ledger (writer, recover, reconcile, archive, health) and ops read a campaign's meta, counters,
rate ring and ledger hashes only through these, never by field names of their own (the names:
``engine.keys``). A read is queued on a pipeline the caller already sends, beside its own
commands, and decoded from that command's reply, so it costs no round trip of its own:

    r = reads.counters(campaign_id)
    async with redis.pipeline(transaction=False) as p:
        r.queue(p)
        p.zcard(...)
        raw, holds = await p.execute()
    figures = r.decode(raw)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from engine import keys
from engine.core.redis_client import Client
from engine.keys import Counters as C
from engine.keys import Ledger as L
from engine.keys import Meta as M
from engine.keys import Rate as R

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """One command (``queue``, on a pipeline or a client) and the decoding of its reply."""

    queue: Callable[[Any], Any]
    decode: Callable[[Any], T]

    async def run(self, redis: Client) -> T:
        """Alone, in one round trip."""
        return self.decode(await cast("Awaitable[Any]", self.queue(redis)))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _opt_text(v: bytes | str | None) -> str | None:
    return None if v is None else _text(v)


def _ints(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {_text(f): int(v) for f, v in raw.items()}


# -- meta -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetaState:
    definition: bytes | None  # the canonical JSON; None when Redis has no such campaign
    flag: str | None  # the admin flag (``keys.Flag``)
    closes_ms: int | None = None  # read by ``meta_state(..., closes=True)`` only


def definition(campaign_id: str) -> Read[bytes | None]:
    """The campaign's definition (canonical JSON), None if Redis has no such campaign."""
    meta = keys.CampaignKeys(campaign_id).meta
    return Read(lambda p: p.hget(meta, M.DEF), lambda raw: cast("bytes | None", raw))


def meta_state(campaign_id: str, *, closes: bool = False) -> Read[MetaState]:
    """The definition and the admin flag (``closes``: and the window's end, ms)."""
    meta = keys.CampaignKeys(campaign_id).meta
    fields = [M.DEF, M.FLAG, M.CLOSES] if closes else [M.DEF, M.FLAG]

    def decode(raw: list[Any]) -> MetaState:
        end = int(raw[2]) if closes and raw[2] is not None else None
        return MetaState(raw[0], _opt_text(raw[1]), end)

    return Read(lambda p: p.hmget(meta, fields), decode)


# -- counters ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterFigures:
    """The counters hash, by name (a field the scripts have not written yet reads 0)."""

    fields: dict[str, int]

    @property
    def sold(self) -> int:
        return self.fields.get(C.SOLD, 0)

    @property
    def held(self) -> int:
        return self.fields.get(C.HELD, 0)

    @property
    def orders(self) -> int:
        return self.fields.get(C.ORDERS, 0)

    @property
    def buyers(self) -> int:
        return self.fields.get(C.BUYERS, 0)

    @property
    def damaged(self) -> int:
        return self.fields.get(C.DAMAGED, 0)

    def product_sold(self, product_id: str) -> int:
        return self.fields.get(C.sold(product_id), 0)

    def product_held(self, product_id: str) -> int:
        return self.fields.get(C.held(product_id), 0)

    def rejections(self) -> dict[str, int]:
        """Requests refused, by rejection name."""
        n = len(C.REJECTED)
        return {f[n:]: v for f, v in self.fields.items() if f.startswith(C.REJECTED)}


def counter_figures(fields: Mapping[Any, Any]) -> CounterFigures:
    """The figures of a counters hash read whole (``HGETALL``, or ``HSCAN`` page by page)."""
    return CounterFigures(_ints(fields))


def counters(campaign_id: str) -> Read[CounterFigures]:
    """The whole counters hash (a few fields per product: no bound beyond the definition's)."""
    key = keys.CampaignKeys(campaign_id).counters
    return Read(lambda p: p.hgetall(key), counter_figures)


def confirmed_orders(campaign_id: str) -> Read[int]:
    """Orders the scripts have confirmed."""
    key = keys.CampaignKeys(campaign_id).counters
    return Read(lambda p: p.hget(key, C.ORDERS), lambda raw: int(raw or 0))


# -- the rate ring ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateRing:
    """The rate ring: the epoch second each slot counts, and the units taken in it."""

    fields: dict[str, int]

    def taken(self, now_ms: int, seconds: int = 60) -> int:
        """Units taken out of the tranche over the ``seconds`` whole seconds before ``now_ms``."""
        sec, n = now_ms // 1000, len(R.SECOND)
        return sum(self.fields.get(f"{R.UNITS}{slot[n:]}", 0) for slot, s in self.fields.items()
                   if slot.startswith(R.SECOND) and sec - seconds <= s < sec)


def rate_ring(campaign_id: str) -> Read[RateRing]:
    """The whole rate ring (``keys.Rate.RING`` slots: fixed size)."""
    key = keys.CampaignKeys(campaign_id).rate
    return Read(lambda p: p.hgetall(key), lambda raw: RateRing(_ints(raw)))


# -- the ledger hash --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerFigures:
    persisted_orders: int  # orders the ledger holds, as the writers published it
    dead_letters: int  # entries of the campaign the writers parked in fs:dead


def ledger(campaign_id: str) -> Read[LedgerFigures]:
    key = keys.CampaignKeys(campaign_id).ledger

    def decode(raw: list[Any]) -> LedgerFigures:
        return LedgerFigures(int(raw[0] or 0), int(raw[1] or 0))

    return Read(lambda p: p.hmget(key, [L.PERSISTED_ORDERS, L.DEAD_LETTERS]), decode)


def persisted_orders(campaign_id: str) -> Read[int]:
    key = keys.CampaignKeys(campaign_id).ledger
    return Read(lambda p: p.hget(key, L.PERSISTED_ORDERS), lambda raw: int(raw or 0))


# -- reservation records ----------------------------------------------------------------------


def record(campaign_id: str, reservation_id: str) -> Read[bytes | None]:
    """A reservation's stored record, packed (decode it with ``keys.unpack_record``)."""
    key = keys.CampaignKeys(campaign_id).reservations
    return Read(lambda p: p.hget(key, reservation_id), lambda raw: cast("bytes | None", raw))


# -- many fields by name (reconcile and recover, a page of users at a time) -------------------
# One HMGET each: the caller sends at most ``engine.ledger.redisview.CALL`` names per read, so
# no call holds Redis for long.


def user_units(campaign_id: str, fields: Sequence[str]) -> Read[list[int]]:
    """Units in these fields of the users hash (``keys.Users`` fields; 0 where absent)."""
    key = keys.CampaignKeys(campaign_id).users
    return Read(lambda p: p.hmget(key, list(fields)), lambda raw: [int(v or 0) for v in raw])


def idempotency_targets(campaign_id: str, fields: Sequence[str]) -> Read[list[str | None]]:
    """The reservation each ``keys.idempotency_field`` names (None where absent)."""
    key = keys.CampaignKeys(campaign_id).idempotency
    return Read(lambda p: p.hmget(key, list(fields)), lambda raw: [_opt_text(v) for v in raw])


def records(campaign_id: str, reservation_ids: Sequence[str]) -> Read[list[bytes | None]]:
    """These reservations' stored records, packed (None where absent)."""
    key = keys.CampaignKeys(campaign_id).reservations
    return Read(lambda p: p.hmget(key, list(reservation_ids)), lambda raw: cast("list[bytes | None]", raw))
