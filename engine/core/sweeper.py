"""The expiry sweeper: releases every hold within about a second of its deadline.

Runs as a task inside each API worker (and the demo, and ``flashsale sweeper``). Several sweepers
at once are safe: ``expire.lua`` takes a hold off the zset in the same atomic call that returns
its units, so a hold is released exactly once whoever gets there first.

Each tick first reads every campaign's earliest deadline in one pipelined round trip
(``Engine.campaigns_due``) and calls ``expire.lua`` only for campaigns with a hold due: the many
campaigns with no holds at all (closed, sold out, not open yet) cost one ZRANGE each, not a script
call. The read takes nothing: a hold another sweeper expires in between is simply not found again.

The sweeper cannot die silently: any exception of a tick (Redis away, a script error, a bug) is
logged, as one structured line per campaign (or for the whole tick) at most every ``LOG_EVERY_S``
with the count of failures it stands for, and the next tick runs. Each tick is reported
(``SweepTick``): a tick *completes* when the campaign list was read and every due campaign was
tried without an outage (Redis away or refusing writes ends the tick: ``StorageUnavailable``);
it is *good* when, besides, no campaign failed at all (a script error: damaged data or a bug).
``/readyz`` shows both ages and fails when no tick has completed for a while (the sweeper is
stuck, or cannot write); the metric
``flashsale_sweeper_last_success_timestamp_seconds`` and its alert follow the last good tick, so
a campaign whose holds cannot be expired pages someone without taking every worker out of service.
Every tick also gives the rate limiter's pruner (``engine.core.prune``) its bounded turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.core.engine import Engine
from engine.core.prune import RateLimitPruner
from engine.errors import StorageUnavailable
from engine.settings import DEFAULT_SWEEP_INTERVAL_S, DEFAULT_SWEEP_LIMIT

log = logging.getLogger("flashsale.sweeper")
LOG_EVERY_S = 10.0  # at most one log line per failing campaign (or per failing tick) this often
WHOLE_TICK = ""  # the throttle's key for a failure of the tick itself (listing campaigns)


@dataclass(frozen=True, slots=True)
class SweepTick:
    """One tick, as reported to ``on_tick``: wall-clock time, holds expired, campaigns that failed;
    ``completed`` False when the tick itself failed (no campaign list, an outage) or was cut short
    by ``stop``."""

    at_s: float
    expired: int
    failed: int
    completed: bool

    @property
    def good(self) -> bool:
        return self.completed and not self.failed


class _Throttle:
    """One log line per key at most every ``LOG_EVERY_S``, counting the failures in between."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int]] = {}  # key -> (logged at, failures since)

    def error(self, key: str, exc: BaseException) -> None:
        now = time.monotonic()
        logged_at, since = self.last.get(key, (-LOG_EVERY_S, 0))
        if now - logged_at < LOG_EVERY_S:
            self.last[key] = (logged_at, since + 1)
            return
        self.last[key] = (now, 0)
        where = f"campaign {key}" if key else "tick"
        log.error("sweeper: %s failed: %s: %s", where, type(exc).__name__, exc,
                  extra={"campaign": key or None, "error": type(exc).__name__, "similar_since_last": since})

    def keep(self, keys: set[str]) -> None:
        """Forget campaigns no longer listed (the table stays as small as the campaign list)."""
        for key in [k for k in self.last if k and k not in keys]:
            del self.last[key]


class Sweeper:
    def __init__(self, engine: Engine, interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
                 limit: int = DEFAULT_SWEEP_LIMIT, on_tick: Callable[[SweepTick], None] | None = None) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.limit = limit
        self.on_tick = on_tick
        self.expired_total = 0
        self.failures_total = 0  # campaign sweeps and whole ticks that raised
        self.started_at_s = time.time()
        self.last_completed_s: float | None = None  # wall clock of the last completed tick
        self.last_good_s: float | None = None  # ... and of the last tick in which nothing failed
        self._throttle = _Throttle()
        self.pruner = RateLimitPruner(engine.redis)  # stale rate limiter fields, pruned as the sale runs
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def sweep_once(self, campaign_ids: list[str]) -> int:
        """Expire every due hold of these campaigns; how many were expired. A campaign that fails
        is logged and counted (``failures_total``) and does not stop the others' sweep; an outage
        (``StorageUnavailable``) is raised."""
        expired, _, _ = await self._sweep(campaign_ids)
        return expired

    async def _sweep(self, campaign_ids: list[str]) -> tuple[int, int, bool]:
        """(holds expired, campaigns failed, every due campaign tried: not cut short by ``stop``)."""
        expired = failed = 0
        self._throttle.keep(set(campaign_ids))
        for cid in await self.engine.campaigns_due(campaign_ids):
            if self._stop.is_set():
                return expired, failed, False
            more = True
            try:
                while more and not self._stop.is_set():
                    n, more = await self.engine.expire_due(cid, self.limit)
                    expired += n
                    self.expired_total += n
            except StorageUnavailable:  # an outage is every campaign's: the tick ends here
                raise
            except Exception as exc:  # one campaign's trouble, whatever it is, must not stop the others
                failed += 1
                self.failures_total += 1
                self._throttle.error(cid, exc)
        await self.pruner.step(campaign_ids)  # bounded; never raises for Redis errors
        return expired, failed, not self._stop.is_set()

    async def tick(self) -> SweepTick:
        """One sweep of every campaign; never raises but cancellation."""
        try:
            expired, failed, finished = await self._sweep(await self.engine.campaign_ids())
            tick = SweepTick(time.time(), expired, failed, completed=finished)
        except Exception as exc:  # Redis away, or a bug: logged, and the next tick tries again
            self.failures_total += 1
            self._throttle.error(WHOLE_TICK, exc)
            tick = SweepTick(time.time(), 0, 0, completed=False)
        if tick.completed:
            self.last_completed_s = tick.at_s
        if tick.good:
            self.last_good_s = tick.at_s
        if self.on_tick is not None:
            try:
                self.on_tick(tick)
            except Exception:  # a reporting bug must not stop the sweep either
                log.exception("sweeper: reporting a tick failed")
        return tick

    def ages(self, now_s: float | None = None) -> tuple[float, float]:
        """Seconds since the last completed and the last good tick (since start if none yet)."""
        now = time.time() if now_s is None else now_s
        return (now - (self.last_completed_s or self.started_at_s), now - (self.last_good_s or self.started_at_s))

    async def run(self) -> None:
        """Sweep every campaign each ``interval_s`` (jittered) until ``stop``. The campaign list
        is re-read every tick (one SMEMBERS), so a campaign loaded a moment ago is swept too."""
        while not self._stop.is_set():
            await self.tick()
            # jitter keeps several workers' sweeps from landing together
            delay = self.interval_s * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
