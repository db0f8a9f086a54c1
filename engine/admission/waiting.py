"""Polls of the waiting room, answered from this worker's memory.

A poll must not cost a Redis round trip: each worker keeps, per campaign, a snapshot (the
definition, the rate history, the campaign's counters through the Engine, Redis ``TIME``) read at
most every ``REFRESH_S`` by one request while the others wait for it, and, per ticket, its record
and its position once fixed (a bounded LRU: the least recently polled ticket is dropped first and
read again if it comes back). A ticket's position is fixed once Redis ``TIME`` has passed
``opens_at`` (``engine.admission.queue``): from then on it never changes.

The answer is pure arithmetic on those (``answer``): the frontier from the schedule, the state, the
token, and ``poll_after_ms``: the time until the ticket's turn (between 2 s and 5 minutes), so a
ticket polls a handful of times however long it waits; before the opening, when no position is
known, the opening itself, plus a random point within half the time the pre-queue takes to admit
(at most 2 minutes), so that the pre-queue hears its positions early but does not poll in step.

Admission goes by position alone: a position is admitted at its instant (``Schedule.admitted_at``)
whoever polls when. Its token expires ``token_seconds`` after the later of that instant and the
ticket's first poll from the opening on (kept in Redis by ``queue_seen.lua`` when this worker
first reads the ticket after the opening): a pre-queue ticket that comes back later than its
admission still finds its turn, with the whole of its token's time, ahead of every later arrival.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from engine import keys
from engine.admission.queue import TicketRecord, queue_campaign, schedule_of
from engine.admission.schedule import Schedule
from engine.admission.scripts import AdmissionScripts
from engine.admission.tokens import Keyring
from engine.campaign import Campaign, ms_to_rfc3339
from engine.core import Counters, Engine
from engine.core.scripts import run
from engine.errors import NotFound

REFRESH_S = 0.2  # a campaign's snapshot is read again after this long
MAX_TICKETS = 200_000  # tickets kept per worker (LRU)
MIN_POLL_MS = 2000  # nobody is told to come back sooner
MAX_POLL_MS = 300_000  # nor later, while waiting: far back, a poll every 5 minutes
OPENING_SPREAD_MS = 120_000  # at most: the pre-queue's first polls after the opening, spread at random
OPENING_POLL_MS = 250  # at least, once the opening is near: the snapshot's clock may lag Redis's
PAUSED_POLL_MS = 30_000  # while admission is paused (it may resume any moment)
SOLD_OUT_POLL_MS = 60_000  # while nothing is left (units come back only as holds lapse)
EXPIRED_POLL_MS = 600_000  # an expired ticket has nothing more to learn
JITTER = 0.1  # +-10% on every poll_after_ms


@dataclass(frozen=True, slots=True)
class Snapshot:
    campaign: Campaign
    schedule: Schedule
    seed_sha: str | None
    tickets: int
    nothing_left: bool
    redis_ms: int  # Redis TIME when read
    read_at: float  # time.monotonic() when read

    def now_ms(self) -> int:
        """Redis time now, as this worker's clock carries it forward from the read."""
        return self.redis_ms + int((time.monotonic() - self.read_at) * 1000)


@dataclass(frozen=True, slots=True)
class Ticket:
    record: TicketRecord
    position: int | None  # 1-based, once fixed
    first_poll_ms: int | None = None  # its first poll from the opening on (Redis TIME), once read


def nothing_left(c: Counters) -> bool:
    """Nothing left to admit to: closed, the tranche gone, or every product gone."""
    campaign = c.view.campaign
    if c.view.state == "closed" or campaign.total_units - c.sold - c.held <= 0:
        return True
    return all(p.total_units - c.product_sold.get(p.id, 0) - c.product_held.get(p.id, 0) <= 0
               for p in campaign.products)


def _jitter(ms: int, rng: random.Random) -> int:
    return int(ms * (1 + rng.uniform(-JITTER, JITTER)))


def answer(ticket_id: str, snap: Snapshot, ticket: Ticket, keyring: Keyring | None, now_ms: int,
           rng: random.Random) -> dict[str, Any]:
    """The poll body of docs/API.md for one ticket at ``now_ms`` (pure)."""
    c, sched = snap.campaign, snap.schedule
    out: dict[str, Any] = {"ticket": ticket_id, "state": "waiting", "position": None, "ahead": None,
                           "estimated_wait_s": None, "poll_after_ms": 0, "admitted_at": None,
                           "admission_token": None, "token_expires_at": None}
    if now_ms < c.opens_at_ms or ticket.position is None:
        until = max(c.opens_at_ms - now_ms, 0)
        rate = max(sched.rate_at(now_ms), 1)
        spread = min(OPENING_SPREAD_MS, snap.tickets * 1000 // rate // 2)
        if until > MAX_POLL_MS + OPENING_SPREAD_MS:
            out["poll_after_ms"] = _jitter(MAX_POLL_MS, rng)
        else:  # come back at the opening, within the first half of the time the pre-queue takes
            out["poll_after_ms"] = max(OPENING_POLL_MS, until + int(rng.uniform(0, spread)))
        return out
    position = ticket.position
    frontier = sched.admitted(now_ms)
    out["position"] = position
    out["ahead"] = max(position - 1 - frontier, 0)
    admitted_at = sched.admitted_at(position, ticket.record.joined_ms)
    if admitted_at is not None and admitted_at <= now_ms:
        assert c.admission is not None and c.admission.token_seconds is not None
        expires = max(admitted_at, ticket.first_poll_ms or admitted_at) + c.admission.token_seconds * 1000
        out["estimated_wait_s"] = 0
        out["admitted_at"] = ms_to_rfc3339(admitted_at)
        if now_ms >= expires:
            out.update(state="expired", poll_after_ms=_jitter(EXPIRED_POLL_MS, rng))
        elif keyring is not None:  # nothing changes for it until the token's expiry
            out.update(state="admitted", poll_after_ms=max(MIN_POLL_MS, expires - now_ms),
                       admission_token=keyring.sign(c.id, ticket.record.user_id, expires),
                       token_expires_at=ms_to_rfc3339(expires))
        else:  # no key to sign with (``flashsale serve`` refuses to start so): it waits
            out["poll_after_ms"] = _jitter(PAUSED_POLL_MS, rng)
        return out
    if snap.nothing_left:
        out.update(state="sold_out", poll_after_ms=_jitter(SOLD_OUT_POLL_MS, rng))
        return out
    due = admitted_at
    if due is None:  # paused: no estimate
        out["poll_after_ms"] = _jitter(PAUSED_POLL_MS, rng)
        return out
    wait = max(due - now_ms, 0)
    out["estimated_wait_s"] = -(-wait // 1000)
    # come back when the turn is due (or in 5 minutes, whichever is first): as the rate holds, a
    # ticket polls a handful of times in all, however long its wait
    out["poll_after_ms"] = _jitter(min(MAX_POLL_MS, max(MIN_POLL_MS, wait)), rng)
    return out


class WaitingRoom:
    """This worker's view of every waiting room it is asked about."""

    def __init__(self, engine: Engine, keyring: Keyring | None, *, max_tickets: int = MAX_TICKETS) -> None:
        self.engine = engine
        self.redis = engine.redis
        self.scripts = AdmissionScripts.register_on(engine.redis)
        self.keyring = keyring
        self.max_tickets = max_tickets
        self.rng = random.Random()
        self._snapshots: dict[str, Snapshot] = {}
        self._refreshing: dict[str, asyncio.Future[Snapshot]] = {}
        self._tickets: OrderedDict[tuple[str, str], Ticket] = OrderedDict()
        self.reads = 0  # Redis round trips made for polls (snapshots and tickets): tests, the bench

    async def snapshot(self, campaign_id: str) -> Snapshot:
        snap = self._snapshots.get(campaign_id)
        if snap is not None and time.monotonic() - snap.read_at < REFRESH_S:
            return snap
        pending = self._refreshing.get(campaign_id)
        if pending is None:
            pending = asyncio.ensure_future(self._read(campaign_id))
            self._refreshing[campaign_id] = pending
            pending.add_done_callback(lambda _: self._refreshing.pop(campaign_id, None))
        return await asyncio.shield(pending)

    async def _read(self, campaign_id: str) -> Snapshot:
        k = keys.CampaignKeys(campaign_id)

        async def admission() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as p:
                p.hmget(k.admission, [keys.Admission.SEED_SHA, keys.Admission.RATES])
                p.zcard(k.queue)
                return await p.execute()  # type: ignore[no-any-return]

        self.reads += 1
        counters, ((seed_sha, rates), count) = await asyncio.gather(self.engine.counters(campaign_id), admission())
        c = counters.view.campaign
        queue_campaign(c)
        snap = Snapshot(c, schedule_of(c, rates), None if seed_sha is None else seed_sha.decode(), int(count),
                        nothing_left(counters), counters.view.now_ms, time.monotonic())
        self._snapshots[campaign_id] = snap
        return snap

    async def ticket(self, campaign_id: str, ticket_id: str, storefront: str, snap: Snapshot) -> Ticket:
        """The ticket as this storefront may see it; ``NotFound`` for an unknown id or another
        storefront's ticket, alike."""
        key = (campaign_id, ticket_id)
        t = self._tickets.get(key)
        if t is None or (t.position is None and snap.now_ms() >= snap.campaign.opens_at_ms):
            t = await self._read_ticket(campaign_id, ticket_id, snap)
            self._tickets[key] = t
            while len(self._tickets) > self.max_tickets:
                self._tickets.popitem(last=False)
        else:
            self._tickets.move_to_end(key)
        if t.record.storefront != storefront:
            raise NotFound("ticket", ticket_id)
        return t

    async def _read_ticket(self, campaign_id: str, ticket_id: str, snap: Snapshot) -> Ticket:
        k = keys.CampaignKeys(campaign_id)
        self.reads += 1
        raw, rank, now, first = await run(self.scripts.queue_seen, [k.tickets, k.queue, k.first_polls],
                                          [ticket_id, snap.campaign.opens_at_ms])
        if raw is None or rank is None:
            raise NotFound("ticket", ticket_id)
        record = TicketRecord.unpack(raw)
        fixed = not record.pre_queue or int(now) >= snap.campaign.opens_at_ms
        return Ticket(record, int(rank) + 1 if fixed else None, None if first is None else int(first))

    async def poll(self, campaign_id: str, ticket_id: str, storefront: str) -> dict[str, Any]:
        snap = await self.snapshot(campaign_id)
        ticket = await self.ticket(campaign_id, ticket_id, storefront, snap)
        return answer(ticket_id, snap, ticket, self.keyring, snap.now_ms(), self.rng)

    def forget(self, campaign_id: str) -> None:
        """Drop a campaign's snapshot (after a rate change made here: the next poll reads again)."""
        self._snapshots.pop(campaign_id, None)

