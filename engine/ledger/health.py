"""What the writers report, for the stats, the metrics and the dashboard (``ledger_status``).

The writers publish each campaign's ``persisted_orders`` (monotonic, after commit) and
``dead_letters`` (count) in its ledger hash, and announce themselves in ``fs:writers`` and
``fs:writer:NAME`` (a live writer's latest figures, JSON, with a TTL): ``engine.keys``.

The lag is what Redis confirmed and the ledger does not hold yet: ``orders`` (counted by
``confirm.lua``) minus ``persisted_orders``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.commands.core import AsyncScript

from engine import keys
from engine.core import reads
from engine.core.redis_client import Client
from engine.ledger.streams import GROUP, registered

UNDELIVERED_SCAN = 10_000  # most entries counted one by one when Redis cannot give the lag


async def announce(redis: Client, consumer: str, figures: dict[str, Any], *, ttl_ms: int) -> None:
    """A writer says it is alive, with its latest figures (gone ``ttl_ms`` after it stops saying so)."""
    async with redis.pipeline(transaction=False) as p:
        p.set(keys.liveness_key(consumer), orjson.dumps(figures), px=ttl_ms)
        p.sadd(keys.WRITERS, consumer)
        await p.execute()


async def farewell(redis: Client, consumer: str) -> None:
    """A writer that stops cleanly leaves the list."""
    async with redis.pipeline(transaction=False) as p:
        p.delete(keys.liveness_key(consumer))
        p.srem(keys.WRITERS, consumer)
        await p.execute()


def progress_script(client: Client) -> AsyncScript:
    """``ledger_progress.lua``: publish persisted_orders, never backwards."""
    return registered(client, "ledger_progress")


@dataclass(frozen=True, slots=True)
class CampaignLedger:
    campaign_id: str
    confirmed_orders: int  # what Redis has confirmed
    persisted_orders: int  # what the ledger holds
    stream_length: int  # entries in the stream (trimmed once every group has them)
    undelivered: int | None  # entries no writer has read yet (at most UNDELIVERED_SCAN when counted)
    pending: int  # read by a writer, not yet committed and acknowledged
    dead_letters: int  # entries of this campaign parked in fs:dead

    @property
    def lag_orders(self) -> int:
        return max(self.confirmed_orders - self.persisted_orders, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "confirmed_orders": self.confirmed_orders,
                "persisted_orders": self.persisted_orders, "lag_orders": self.lag_orders,
                "stream_length": self.stream_length, "undelivered": self.undelivered,
                "pending": self.pending, "dead_letters": self.dead_letters}


@dataclass(frozen=True, slots=True)
class WriterInfo:
    consumer: str
    alive: bool
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    campaigns: dict[str, CampaignLedger]
    writers: tuple[WriterInfo, ...]
    dead_letters: int  # every entry in fs:dead

    @property
    def writers_alive(self) -> int:
        return sum(w.alive for w in self.writers)

    def to_dict(self) -> dict[str, Any]:
        return {"campaigns": {c: v.to_dict() for c, v in self.campaigns.items()},
                "writers": [{"consumer": w.consumer, "alive": w.alive, **w.figures} for w in self.writers],
                "writers_alive": self.writers_alive, "dead_letters": self.dead_letters}


def _int(v: Any) -> int:
    return int(v) if v is not None else 0


async def campaign_ledger(redis: Client, campaign_id: str) -> CampaignLedger:
    """One campaign's ledger figures, in one round trip (no key scans)."""
    k = keys.CampaignKeys(campaign_id)
    figures, confirmed = reads.ledger(campaign_id), reads.confirmed_orders(campaign_id)
    async with redis.pipeline(transaction=False) as p:
        figures.queue(p)
        confirmed.queue(p)
        p.xlen(k.events)
        p.xinfo_groups(k.events)
        replies = await p.execute(raise_on_error=False)  # only XINFO GROUPS may fail (no stream yet)
    if failed := next((r for r in replies[:3] if isinstance(r, Exception)), None):
        raise failed  # Redis (or, on a cluster, the campaign's master) away
    raw_figures, orders, length, groups = replies
    ledger = figures.decode(raw_figures)
    ours = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None) \
        if isinstance(groups, list) else None
    lag = ours.get("lag") if ours else length
    if ours and lag is None:
        # Redis cannot tell (e.g. its group counters after an AOF reload): count what lies past
        # the last delivered entry, up to a bound
        last = ours["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        lag = len(await redis.xrange(k.events, min=f"({last}", count=UNDELIVERED_SCAN))
    return CampaignLedger(campaign_id, confirmed.decode(orders), ledger.persisted_orders, _int(length),
                          None if lag is None else int(lag), _int(ours["pending"]) if ours else 0, ledger.dead_letters)


async def writers(redis: Client) -> tuple[WriterInfo, ...]:
    names = sorted(n.decode() for n in await cast("Awaitable[set[bytes]]", redis.smembers(keys.WRITERS)))
    if not names:
        return ()
    async with redis.pipeline(transaction=False) as p:  # one GET each: on a cluster, each key has its slot
        for n in names:
            p.get(keys.liveness_key(n))
        raw = await p.execute()
    return tuple(WriterInfo(n, r is not None, orjson.loads(r) if r is not None else {})
                 for n, r in zip(names, raw, strict=True))


async def ledger_status(redis: Client) -> LedgerStatus:
    """Per campaign: confirmed vs persisted orders (the lag), undelivered, pending, dead letters;
    the writers and whether each is alive; the dead-letter total."""
    cids = sorted(c.decode() for c in await cast("Awaitable[set[bytes]]", redis.smembers(keys.CAMPAIGNS)))
    campaigns = {c: await campaign_ledger(redis, c) for c in cids}
    return LedgerStatus(campaigns, await writers(redis), int(await redis.xlen(keys.DEAD_LETTERS)))
