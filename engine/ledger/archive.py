"""``flashsale campaign archive ID``: a finished sale's keys leave Redis; its ledger stays.

A campaign is archived only when nothing in Redis is still needed, all judged before the first
write, each refusal one line saying why (``ArchiveRefused``):

1. it is in Redis, and closed (admin flag ``closed``, or past ``closes_at`` by Redis TIME), and
   not being recovered;
2. no reservation is held (``held`` is 0 and the holds zset is empty): nothing can change again;
3. the ledger writer has read and acknowledged every stream entry (group ``ledger``: nothing
   pending, nothing undelivered);
4. the ledger keeps the definition, and ``reconcile`` finds no difference: every order is there.

Then the campaign is recorded in ``fs:archived`` (id -> when, orders, units sold), leaves
``fs:campaigns`` (so writers, sweepers and ops stop following it), and each of its keys is
UNLINKed, one call per key: Redis frees a large value in a background thread, so no call blocks
on the size of the sale. ``reconcile`` of an archived campaign checks the ledger alone and says so.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import click
import orjson
from redis.exceptions import ResponseError

from engine import keys
from engine.core import reads
from engine.core.redis_client import Client, connect_any, queue_time
from engine.errors import LedgerError
from engine.ledger.factory import sink_for
from engine.ledger.reconcile import reconcile
from engine.ledger.recover import stage_keys
from engine.ledger.redisview import archived_record
from engine.ledger.sink import Sink, entry_key
from engine.ledger.streams import GROUP
from engine.settings import Settings

TOOL_TIMEOUT_S = 60.0  # the archive's checks run reconcile: allow it time


class ArchiveRefused(LedgerError):
    """The campaign cannot be archived yet; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Archived:
    campaign_id: str
    archived_at_ms: int
    orders: int
    sold: int
    keys_removed: int


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _stream_state(redis: Client, stream: str) -> tuple[int, int]:
    """(entries pending, entries never delivered) of the writers' group on the stream."""
    try:
        info = await redis.xinfo_stream(stream)
        groups = await cast("Awaitable[list[dict[str, Any]]]", redis.xinfo_groups(stream))
    except ResponseError:
        return 0, 0  # no stream: nothing was ever written
    group = next((g for g in groups if _text(g["name"]) == GROUP), None)
    if group is None:
        return 0, int(info["length"])
    last = entry_key(_text(info["last-generated-id"]))
    delivered = entry_key(_text(group["last-delivered-id"]))
    return int(group["pending"]), int(info["length"]) if delivered < last else 0


async def judge(redis: Client, sink: Sink, campaign_id: str) -> tuple[int, reads.CounterFigures]:
    """Raise ArchiveRefused unless the campaign may be archived; (Redis TIME ms, its counters)."""
    k = keys.CampaignKeys(campaign_id)
    meta, counted = reads.meta_state(campaign_id, closes=True), reads.counters(campaign_id)
    async with redis.pipeline(transaction=False) as p:
        meta.queue(p)
        counted.queue(p)
        p.zcard(k.holds)
        queue_time(p, k.meta)
        raw_meta, raw_counters, holds, (sec, usec) = await p.execute()
    now = int(sec) * 1000 + int(usec) // 1000
    m = meta.decode(raw_meta)
    if m.definition is None:
        if (a := await archived_record(redis, campaign_id)) is not None:
            raise ArchiveRefused(f"campaign {campaign_id} is already archived (at {a['at']})")
        raise ArchiveRefused(f"campaign {campaign_id} is not in Redis: nothing to archive")
    flag = m.flag
    if flag == keys.Flag.RECOVERING:
        raise ArchiveRefused(f"campaign {campaign_id} is being recovered: let `flashsale recover` finish first")
    closes = m.closes_ms or 0
    if flag != keys.Flag.CLOSED and now < closes:
        raise ArchiveRefused(f"campaign {campaign_id} is not closed (it closes at {closes} ms, now {now} ms): "
                             "close it first")
    counters = counted.decode(raw_counters)
    if counters.held or holds:
        raise ArchiveRefused(f"campaign {campaign_id} still holds {max(counters.held, holds)} "
                             "reserved unit(s) or hold(s): wait until they are confirmed, cancelled or expired")
    pending, undelivered = await _stream_state(redis, k.events)
    if pending or undelivered:
        raise ArchiveRefused(f"campaign {campaign_id}: the ledger writer has {pending} stream entries pending and "
                             f"{undelivered} not yet read: run `flashsale writer` until it has drained the stream")
    if await sink.campaign_definition(campaign_id) is None:
        raise ArchiveRefused(f"campaign {campaign_id}: the ledger does not keep its definition yet: run the writer")
    report = await reconcile(redis, sink, campaign_id)
    if not report.clean:
        raise ArchiveRefused(f"campaign {campaign_id}: reconcile finds {len(report.differences)} difference(s) "
                             f"between Redis and the ledger: see `flashsale reconcile {campaign_id}`")
    return now, counters


async def archive(redis: Client, sink: Sink, campaign_id: str) -> Archived:
    """Archive a closed, fully persisted campaign (see the module docstring), or ArchiveRefused."""
    now, counters = await judge(redis, sink, campaign_id)
    done = Archived(campaign_id, now, counters.orders, counters.sold, 0)
    record = {"archived_at_ms": done.archived_at_ms, "orders": done.orders, "sold": done.sold,
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000))}
    await cast("Awaitable[int]", redis.hset(keys.ARCHIVED, campaign_id, orjson.dumps(record).decode()))
    await cast("Awaitable[int]", redis.srem(keys.CAMPAIGNS, campaign_id))
    removed = 0
    for key in [*keys.CampaignKeys(campaign_id).all(), *stage_keys(campaign_id)]:
        removed += int(await redis.unlink(key))
    return Archived(campaign_id, now, done.orders, done.sold, removed)


def archive_command(campaign_id: str, settings: Settings) -> None:
    """``flashsale campaign archive ID``: one line either way; exit 1 when refused."""
    from engine.cli import run_async  # late: engine.cli imports the ledger's commands while it loads

    try:
        sink = sink_for(settings.database_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--database-url") from None

    async def go() -> Archived:
        client = connect_any(settings.redis_url, TOOL_TIMEOUT_S)
        try:
            await sink.open()
            return await archive(client, sink, campaign_id)
        finally:
            await sink.close()
            await client.aclose()

    a = run_async(go)
    click.echo(f"campaign {campaign_id} archived: {a.orders} orders ({a.sold} units) kept in the ledger, "
               f"{a.keys_removed} keys removed from Redis")
