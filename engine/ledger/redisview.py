"""One campaign's live state in Redis, read page by page: counters, users, the undrained stream.

Every change the scripts make to a campaign's counters, users, reservations or idempotency keys
appends to its stream in the same call, so the stream's ``last-generated-id`` names the state:
two reads with the same id saw the same campaign. The view is read in pages (``HSCAN`` and
``XRANGE`` with ``COUNT``, at most ``CALL`` items per call, so no call holds Redis for long however
large the sale) between two reads of that id; if they differ the campaign moved while it was
read, and the view is read again (``attempts`` times at most). The view is therefore exact, as a
single transaction would have seen it, on a campaign that is quiescent while it is read: closed,
paused or refused (``recover`` marks it recovering first); on a campaign selling at full speed,
``read_view`` may give up with ``CampaignMoving``. Entries the writer trims meanwhile were
acknowledged, so the ledger, read after the view, holds them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
from redis.exceptions import ResponseError

from engine import keys
from engine.core import reads
from engine.core.redis_client import Client
from engine.errors import LedgerError
from engine.events import Event, MalformedEvent, decode

T = TypeVar("T")

NO_STREAM = "0-0"  # the last id of a stream that does not exist
PAGE = 1000  # ledger rows, or reservations of whole users, per page
CALL = 250  # hash fields or stream entries per Redis call at most (a call holds Redis well under 20 ms)
ATTEMPTS = 5  # reads of a campaign that keeps moving before giving up


class CampaignMoving(LedgerError):
    """The campaign changed on every attempt to read it: run this on a quiescent campaign."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True, slots=True)
class RedisView:
    campaign_id: str
    definition: bytes | None  # meta ``def``; None when Redis lost (or never had) the campaign
    flag: str | None
    counters: dict[str, int]
    users: dict[str, int]
    events: tuple[Event, ...]  # the stream's entries, decoded
    malformed: tuple[str, ...]  # ids of entries that are not events
    last_id: str  # the stream's last-generated-id
    records: dict[str, bytes] = field(default_factory=dict)  # reservation id -> packed record
    idempotency: dict[str, str] = field(default_factory=dict)  # ``<storefront>|<key>`` -> reservation id
    buyers: dict[str, int] = field(default_factory=dict)  # the buyers hash: i|ID, d|DEVICE, n|NETWORK -> units


async def archived_record(redis: Client, campaign_id: str) -> dict[str, Any] | None:
    """What ``fs:archived`` says of the campaign (``flashsale campaign archive``), or None."""
    raw = await redis.hget(keys.ARCHIVED, campaign_id)  # type: ignore[misc]
    return None if raw is None else cast("dict[str, Any]", orjson.loads(raw))


async def last_id(redis: Client, stream: str) -> str:
    """The stream's last-generated-id (``NO_STREAM`` if there is none)."""
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError:
        return NO_STREAM
    return _text(info["last-generated-id"])


def per_call(page: int) -> int:
    """Fields or entries one Redis call carries, for a page of ``page``: at most ``CALL``."""
    return max(1, min(page, CALL))


async def hash_pages(redis: Client, key: str, page: int = PAGE) -> AsyncIterator[dict[bytes, bytes]]:
    """A hash, one HSCAN call of ``per_call(page)`` fields at a time (a field may come twice)."""
    cursor = 0
    while True:
        cursor, chunk = await cast("Awaitable[tuple[int, dict[bytes, bytes]]]",
                                   redis.hscan(key, cursor, count=per_call(page)))
        yield chunk
        if cursor == 0:
            return


async def scan_hash(redis: Client, key: str, page: int = PAGE) -> dict[bytes, bytes]:
    """A whole hash, ``page`` fields per HSCAN call (a field seen twice is kept once)."""
    out: dict[bytes, bytes] = {}
    async for chunk in hash_pages(redis, key, page):
        out.update(chunk)
    return out


async def paged(redis: Client, read: Callable[[list[str]], reads.Read[list[T]]], names: list[str],
                page: int = PAGE) -> list[T]:
    """A read of many fields by name (``engine.core.reads``), ``per_call(page)`` names per
    command, in one round trip: one value per name, in order."""
    if not names:
        return []
    n = per_call(page)
    calls = [read(names[lo : lo + n]) for lo in range(0, len(names), n)]
    async with redis.pipeline(transaction=False) as pipe:
        for c in calls:
            c.queue(pipe)
        replies = await pipe.execute()
    return [v for c, raw in zip(calls, replies, strict=True) for v in c.decode(raw)]


async def count_nonzero(redis: Client, key: str, page: int = PAGE) -> int:
    """Fields of a hash of counts whose value is not 0, read ``page`` per HSCAN call."""
    n = 0
    async for chunk in hash_pages(redis, key, page):
        n += sum(1 for v in chunk.values() if int(v) != 0)
    return n


async def stream_pages(redis: Client, stream: str, upto: str, page: int = PAGE) -> AsyncIterator[list[Any]]:
    """Entries of the stream up to ``upto`` (inclusive), one XRANGE call of ``per_call(page)`` at a time."""
    start, n = "-", per_call(page)
    while True:
        chunk = await redis.xrange(stream, start, upto, count=n)
        yield chunk
        if len(chunk) < n:
            return
        start = "(" + _text(chunk[-1][0])


async def scan_stream(redis: Client, stream: str, upto: str, page: int = PAGE) -> list[Any]:
    """Entries of the stream up to ``upto`` (inclusive), ``page`` per XRANGE call."""
    return [e async for chunk in stream_pages(redis, stream, upto, page) for e in chunk]


async def read_view(redis: Client, campaign_id: str, *, records: bool = False,
                    idempotency: bool = False, users: bool = True, stream: bool = True, page: int = PAGE,
                    attempts: int = ATTEMPTS) -> RedisView:
    """Read a campaign's state in pages, as one consistent view (see the module docstring);
    ``records``: also every reservation record; ``idempotency``: also the idempotency hash;
    ``users`` and ``stream``: the users and buyers hashes and the stream's entries too (reconcile
    and recover read those page by page instead, up to the view's ``last_id``)."""
    for _ in range(attempts):
        view = await _read_once(redis, campaign_id, records, idempotency, users, stream, page)
        if view is not None:
            return view
    raise CampaignMoving(f"campaign {campaign_id!r} changed while it was read, {attempts} times: run this when it "
                         "is quiescent (closed, paused, or after the sale)")


async def _read_once(redis: Client, campaign_id: str, records: bool, idempotency: bool, users: bool,
                     stream: bool, page: int) -> RedisView | None:
    k = keys.CampaignKeys(campaign_id)
    before = await last_id(redis, k.events)
    meta = await reads.meta_state(campaign_id).run(redis)
    counters = await scan_hash(redis, k.counters, page)
    people = await scan_hash(redis, k.users, page) if users else {}
    buyers = await scan_hash(redis, k.buyers, page) if users else {}
    entries = await scan_stream(redis, k.events, before, page) if stream and before != NO_STREAM else []
    recs = await scan_hash(redis, k.reservations, page) if records else {}
    idem = await scan_hash(redis, k.idempotency, page) if idempotency else {}
    if await last_id(redis, k.events) != before:
        return None
    events: list[Event] = []
    malformed: list[str] = []
    for eid, fields in entries:
        try:
            events.append(decode(campaign_id, eid, fields))
        except MalformedEvent:
            malformed.append(_text(eid))
    return RedisView(
        campaign_id, meta.definition, meta.flag,
        {_text(f): int(v) for f, v in counters.items()}, {_text(f): int(v) for f, v in people.items()},
        tuple(events), tuple(malformed), before, {_text(r): v for r, v in recs.items()},
        {_text(f): _text(r) for f, r in idem.items()}, {_text(f): int(v) for f, v in buyers.items()},
    )
