"""One campaign's live state in Redis, read in one MULTI: counters, users, the undrained stream.

Every change the scripts make to a campaign's counters, users or reservations appends to its
stream in the same call, so the stream's ``last-generated-id`` names the state: two reads with the
same id saw the same campaign (``recover`` relies on this to apply its plan atomically).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from engine import keys
from engine.events import Event, MalformedEvent, decode

NO_STREAM = "0-0"  # the last id of a stream that does not exist


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


async def archived_record(redis: aioredis.Redis, campaign_id: str) -> dict[str, Any] | None:
    """What ``fs:archived`` says of the campaign (``flashsale campaign archive``), or None."""
    raw = await redis.hget(keys.ARCHIVED, campaign_id)  # type: ignore[misc]
    return None if raw is None else cast("dict[str, Any]", orjson.loads(raw))


async def read_view(redis: aioredis.Redis, campaign_id: str, *, records: bool = False,
                    idempotency: bool = False) -> RedisView:
    """Read a campaign's state in one MULTI (``records``: also every reservation record;
    ``idempotency``: also the idempotency hash)."""
    k = keys.CampaignKeys(campaign_id)
    async with redis.pipeline(transaction=True) as p:
        p.hmget(k.meta, ["def", "flag"])
        p.hgetall(k.counters)
        p.hgetall(k.users)
        p.xrange(k.events)
        p.xinfo_stream(k.events)
        if records:
            p.hgetall(k.reservations)
        if idempotency:
            p.hgetall(k.idempotency)
        out = await p.execute(raise_on_error=False)
    (definition, flag), counters, users, entries, info = out[:5]
    for value in [*out[:4], *out[5:]]:
        if isinstance(value, Exception):
            raise value
    extra = iter(out[5:])
    recs = {_text(r): v for r, v in next(extra).items()} if records else {}
    idem = {_text(f): _text(r) for f, r in next(extra).items()} if idempotency else {}
    events: list[Event] = []
    malformed: list[str] = []
    for eid, fields in entries:
        try:
            events.append(decode(campaign_id, eid, fields))
        except MalformedEvent:
            malformed.append(_text(eid))
    last = NO_STREAM if isinstance(info, Exception) else _text(info["last-generated-id"])
    return RedisView(
        campaign_id, definition, None if flag is None else _text(flag),
        {_text(f): int(v) for f, v in counters.items()}, {_text(f): int(v) for f, v in users.items()},
        tuple(events), tuple(malformed), last, recs, idem,
    )
