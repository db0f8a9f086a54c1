"""One campaign's live state in Redis, read page by page: counters, users, the undrained stream.

Every change the scripts make to a campaign's counters, users, reservations or idempotency keys
appends to its stream in the same call, so the stream's ``last-generated-id`` names the state:
two reads with the same id saw the same campaign. The view is read in pages (``HSCAN`` and
``XRANGE`` with ``COUNT``, ``page`` items per call, so no call holds Redis for long however
large the sale) between two reads of that id; if they differ the campaign moved while it was
read, and the view is read again (``attempts`` times at most). The view is therefore exact, as a
single transaction would have seen it, on a campaign that is quiescent while it is read: closed,
paused or refused (``recover`` marks it recovering first); on a campaign selling at full speed,
``read_view`` may give up with ``CampaignMoving``. Entries the writer trims meanwhile were
acknowledged, so the ledger, read after the view, holds them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError

from engine import keys
from engine.core.redis_client import Client
from engine.errors import LedgerError
from engine.events import Event, MalformedEvent, decode

NO_STREAM = "0-0"  # the last id of a stream that does not exist
PAGE = 1000  # hash fields or stream entries per Redis call
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


async def scan_hash(redis: Client, key: str, page: int = PAGE) -> dict[bytes, bytes]:
    """A whole hash, ``page`` fields per HSCAN call (a field seen twice is kept once)."""
    out: dict[bytes, bytes] = {}
    cursor = 0
    while True:
        cursor, chunk = await cast("Awaitable[tuple[int, dict[bytes, bytes]]]",
                                   redis.hscan(key, cursor, count=page))
        out.update(chunk)
        if cursor == 0:
            return out


async def scan_stream(redis: Client, stream: str, upto: str, page: int = PAGE) -> list[Any]:
    """Entries of the stream up to ``upto`` (inclusive), ``page`` per XRANGE call."""
    out: list[Any] = []
    start = "-"
    while True:
        chunk = await redis.xrange(stream, start, upto, count=page)
        out += chunk
        if len(chunk) < page:
            return out
        start = "(" + _text(chunk[-1][0])


async def read_view(redis: Client, campaign_id: str, *, records: bool = False,
                    idempotency: bool = False, page: int = PAGE, attempts: int = ATTEMPTS) -> RedisView:
    """Read a campaign's state in pages, as one consistent view (see the module docstring);
    ``records``: also every reservation record; ``idempotency``: also the idempotency hash."""
    for _ in range(attempts):
        view = await _read_once(redis, campaign_id, records, idempotency, page)
        if view is not None:
            return view
    raise CampaignMoving(f"campaign {campaign_id!r} changed while it was read, {attempts} times: run this when it "
                         "is quiescent (closed, paused, or after the sale)")


async def _read_once(redis: Client, campaign_id: str, records: bool, idempotency: bool,
                     page: int) -> RedisView | None:
    k = keys.CampaignKeys(campaign_id)
    before = await last_id(redis, k.events)
    definition, flag = await redis.hmget(k.meta, ["def", "flag"])  # type: ignore[misc]
    counters = await scan_hash(redis, k.counters, page)
    users = await scan_hash(redis, k.users, page)
    entries = await scan_stream(redis, k.events, before, page) if before != NO_STREAM else []
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
        campaign_id, definition, None if flag is None else _text(flag),
        {_text(f): int(v) for f, v in counters.items()}, {_text(f): int(v) for f, v in users.items()},
        tuple(events), tuple(malformed), before, {_text(r): v for r, v in recs.items()},
        {_text(f): _text(r) for f, r in idem.items()},
    )
