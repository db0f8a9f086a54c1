"""Keep the per-user rate limiter (``fs:{c:ID}:rl``) from growing with every buyer of a sale.

``reserve.lua`` writes each user's GCRA arrival time on every attempt; a field whose time has
passed says nothing a missing field would not (the user is fully replenished). The expiry
sweeper calls ``RateLimitPruner.step`` every tick; at most every ``interval_s`` it runs
``prune_ratelimit.lua`` on each campaign, up to ``calls`` pages of ``count`` fields each from
where the last step stopped, so one step's work is bounded and no call holds Redis for long.
Several sweepers pruning at once are safe: each page is judged and deleted in one script call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from engine import keys
from engine.core.redis_client import Client
from engine.core.scripts import source

log = logging.getLogger("flashsale.sweeper")

PRUNE_INTERVAL_S = 1.0  # a prune step runs at most this often
PRUNE_COUNT = 1000  # fields examined by one script call (HSCAN COUNT)
PRUNE_CALLS = 10  # script calls per campaign per step


@dataclass(frozen=True, slots=True)
class Page:
    cursor: str  # '0': the pass over the hash is over
    deleted: int
    examined: int


class RateLimitPruner:
    def __init__(self, redis: Client, *, interval_s: float = PRUNE_INTERVAL_S, count: int = PRUNE_COUNT,
                 calls: int = PRUNE_CALLS) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self.count = count
        self.calls = calls
        self.deleted_total = 0
        self._script = redis.register_script(source("prune_ratelimit"))  # type: ignore[misc]
        self._cursors: dict[str, str] = {}  # campaign id -> where the pass goes on
        self._due = 0.0

    async def page(self, campaign_id: str, cursor: str = "0") -> Page:
        """One script call: one HSCAN page of the campaign's limiter, stale fields deleted."""
        nxt, deleted, examined = await self._script(keys=[keys.CampaignKeys(campaign_id).ratelimit],
                                                    args=[cursor, self.count])
        self.deleted_total += int(deleted)
        return Page(nxt.decode() if isinstance(nxt, bytes) else str(nxt), int(deleted), int(examined))

    async def prune(self, campaign_id: str) -> int:
        """Up to ``calls`` pages of one campaign from where its pass stopped; fields deleted."""
        deleted = 0
        cursor = self._cursors.get(campaign_id, "0")
        for _ in range(self.calls):
            p = await self.page(campaign_id, cursor)
            deleted += p.deleted
            cursor = p.cursor
            if cursor == "0":
                break
        self._cursors[campaign_id] = cursor
        return deleted

    async def step(self, campaign_ids: Sequence[str]) -> int:
        """Prune every campaign, if ``interval_s`` has passed since the last step; never raises
        for Redis trouble (the next step tries again). Fields deleted."""
        now = time.monotonic()
        if now < self._due:
            return 0
        self._due = now + self.interval_s
        self._cursors = {c: self._cursors.get(c, "0") for c in campaign_ids}  # forget campaigns gone
        deleted = 0
        for cid in campaign_ids:
            try:
                deleted += await self.prune(cid)
            except (RedisError, OSError) as exc:
                log.warning("sweeper: pruning the rate limiter of %s: %s", cid, exc)
        return deleted
