"""The writer's progress as Redis sees it: per campaign stream backlog, pending entries, dead letters.

Read with ``XINFO GROUPS`` and ``XLEN`` (one pipelined round trip for every campaign), so ops
need nothing from the writer process itself: a dead writer shows as a growing lag, which is
the point. Whatever consumer group the writer uses is read; with several groups the slowest
one counts (an entry is only safe in the ledger once every group has it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from engine import keys
from engine.errors import StorageUnavailable


@dataclass(frozen=True, slots=True)
class StreamState:
    """One campaign's events stream and its readers."""

    campaign_id: str
    length: int  # entries in the stream now (XLEN)
    lag: int  # entries the slowest writer group has not read yet (all of them with no group)
    pending: int  # entries read by a writer but not acknowledged yet, summed over groups
    groups: int  # consumer groups reading the stream


@dataclass(frozen=True, slots=True)
class WriterState:
    streams: dict[str, StreamState]
    dead_letters: int  # entries in the dead-letter stream ``fs:dead``


def _int(value: Any) -> int | None:
    if value is None:
        return None
    return int(value)


def _stream_state(campaign_id: str, length: int, groups: Any) -> StreamState:
    if isinstance(groups, ResponseError):  # no such key: nothing was ever appended
        return StreamState(campaign_id, length, 0, 0, 0)
    if isinstance(groups, Exception):
        raise groups
    if not groups:
        return StreamState(campaign_id, length, length, 0, 0)
    lags = []
    for g in groups:
        lag = _int(g.get("lag"))
        if lag is None:  # Redis cannot tell after deletions: estimate from entries read
            read = _int(g.get("entries-read"))
            lag = length if read is None else max(length - read, 0)
        lags.append(lag)
    pending = sum(int(g.get("pending") or 0) for g in groups)
    return StreamState(campaign_id, length, max(lags), pending, len(groups))


async def writer_state(client: aioredis.Redis, campaign_ids: Sequence[str]) -> WriterState:
    """Every campaign's stream state and the dead-letter count, in one round trip."""
    try:
        async with client.pipeline(transaction=False) as p:
            for cid in campaign_ids:
                events = keys.CampaignKeys(cid).events
                p.xlen(events)
                p.xinfo_groups(events)
            p.xlen(keys.DEAD_LETTERS)
            replies = await p.execute(raise_on_error=False)
    except (RedisError, OSError, TimeoutError) as exc:
        raise StorageUnavailable(f"Redis did not answer reading the writer's streams: {exc}") from exc
    for r in replies[::2]:
        if isinstance(r, Exception):
            raise StorageUnavailable(f"Redis refused reading a stream length: {r}")
    streams = {cid: _stream_state(cid, int(replies[2 * i]), replies[2 * i + 1])
               for i, cid in enumerate(campaign_ids)}
    return WriterState(streams, int(replies[-1]))
