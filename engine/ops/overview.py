"""One read of what ops watch: each campaign's counters and ledger figures, the writers, dead letters.

Shared by ``/metrics`` (``engine.ops.collector``) and the dashboard (``engine.ops.web``). The
counters come from the Engine (``Engine.counters``: one round trip per campaign); the ledger's
side from ``engine.ledger.health`` (persisted orders, stream length, entries no writer has
read, entries read but not acknowledged, dead letters, which writers are alive). No key scans.

A campaign whose keys cannot be read (a script-level error such as WRONGTYPE: damaged data) is
left out of the overview of every campaign and logged, so one damaged campaign does not take
/metrics down with it nor pass for Redis being away; asked for by id, its error is raised.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from engine import keys
from engine.core import Counters, Engine
from engine.core.outage import is_outage
from engine.errors import NotFound, StorageUnavailable
from engine.ledger.health import CampaignLedger, campaign_ledger, writers

log = logging.getLogger("flashsale.ops")


@dataclass(frozen=True, slots=True)
class CampaignOverview:
    counters: Counters
    ledger: CampaignLedger


@dataclass(frozen=True, slots=True)
class Overview:
    campaigns: tuple[CampaignOverview, ...]
    dead_letters: int  # every entry in the dead-letter stream fs:dead
    writers_alive: int  # writers whose liveness key has not expired
    writers_known: int  # writers that have ever announced themselves


async def _found(engine: Engine, campaign_id: str | None) -> list[Counters]:
    ids = [campaign_id] if campaign_id is not None else await engine.campaign_ids()
    read = await asyncio.gather(*(engine.counters(cid) for cid in ids), return_exceptions=True)
    found = []
    for r in read:
        if isinstance(r, NotFound) and campaign_id is None:
            continue  # removed between listing and reading
        if isinstance(r, RedisError) and campaign_id is None and not is_outage(r):
            log.warning("ops: campaign left out of the overview: %s", r, extra={"error": type(r).__name__})
            continue
        if isinstance(r, BaseException):
            raise r
        found.append(r)
    return found


async def overview(engine: Engine, campaign_id: str | None = None) -> Overview:
    """Every campaign (or one: ``NotFound`` if unknown); ``StorageUnavailable`` if Redis fails."""
    found = await _found(engine, campaign_id)
    try:
        ledgers = await asyncio.gather(*(campaign_ledger(engine.redis, c.view.campaign.id) for c in found))
        ws = await writers(engine.redis)
        dead = int(await engine.redis.xlen(keys.DEAD_LETTERS))
    except (RedisError, OSError, TimeoutError) as exc:
        if not is_outage(exc):
            raise
        raise StorageUnavailable(f"Redis did not answer reading the ledger's figures: {exc}") from exc
    return Overview(tuple(CampaignOverview(c, lg) for c, lg in zip(found, ledgers, strict=True)), dead,
                    sum(w.alive for w in ws), len(ws))
