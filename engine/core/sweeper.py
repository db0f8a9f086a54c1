"""The expiry sweeper: releases every hold within about a second of its deadline.

Runs as a task inside each API worker (and the demo, and ``flashsale sweeper``). Several sweepers
at once are safe: ``expire.lua`` takes a hold off the zset in the same atomic call that returns
its units, so a hold is released exactly once whoever gets there first.

Each tick first reads every campaign's earliest deadline in one pipelined round trip
(``Engine.campaigns_due``) and calls ``expire.lua`` only for campaigns with a hold due: the many
campaigns with no holds at all (closed, sold out, not open yet) cost one ZRANGE each, not a script
call. The read takes nothing: a hold another sweeper expires in between is simply not found again.
Every tick also gives the rate limiter's pruner (``engine.core.prune``) its bounded turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from engine.core.engine import Engine
from engine.core.prune import RateLimitPruner
from engine.errors import FlashsaleError
from engine.settings import DEFAULT_SWEEP_INTERVAL_S, DEFAULT_SWEEP_LIMIT

log = logging.getLogger("flashsale.sweeper")


class Sweeper:
    def __init__(self, engine: Engine, interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
                 limit: int = DEFAULT_SWEEP_LIMIT) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.limit = limit
        self.expired_total = 0
        self.pruner = RateLimitPruner(engine.redis)  # stale rate limiter fields, pruned as the sale runs
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def sweep_once(self, campaign_ids: list[str]) -> int:
        """Expire every due hold of these campaigns; how many were expired."""
        expired = 0
        for cid in await self.engine.campaigns_due(campaign_ids):
            more = True
            try:
                while more and not self._stop.is_set():
                    n, more = await self.engine.expire_due(cid, self.limit)
                    expired += n
                    self.expired_total += n
            except FlashsaleError as exc:  # one campaign's trouble must not stop the others' sweep
                log.warning("sweeper: campaign %s: %s", cid, exc)
        await self.pruner.step(campaign_ids)
        return expired

    async def run(self) -> None:
        """Sweep every campaign each ``interval_s`` (jittered) until ``stop``. The campaign list
        is re-read every tick (one SMEMBERS), so a campaign loaded a moment ago is swept too."""
        while not self._stop.is_set():
            try:
                await self.sweep_once(await self.engine.campaign_ids())
            except FlashsaleError as exc:  # Redis away: try again next tick, quietly
                log.warning("sweeper: %s", exc)
            # jitter keeps several workers' sweeps from landing together
            delay = self.interval_s * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
