"""The waiting room's writes and its public record: tickets, the seed, the rate, the export.

Order (``queue_join.lua``): a ticket taken in the pre-queue (before ``opens_at``) scores its own
draw, the first 52 bits of SHA-1(seed ':' user id); a later one scores 2^52 + its arrival
number. Position = rank by score (ties, at odds of about n^2 / 2^53, by ticket id). No call
ever reorders the queue, so nothing blocks at the opening whatever the number of tickets, and
anyone holding the export and the revealed seed can recompute every position (``recompute``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from engine import keys
from engine.admission.buyer import Buyer
from engine.admission.definitions import Definition, Definitions
from engine.admission.registry import identity_of
from engine.admission.schedule import Schedule
from engine.admission.scripts import AdmissionScripts
from engine.campaign import Campaign, ms_to_rfc3339
from engine.core.scripts import run
from engine.errors import InvalidState, rejection
from engine.status import Status

FIELDS = [keys.Admission.SEED, keys.Admission.SEED_SHA, keys.Admission.RATES]  # what ``state`` reads

LATE = 2**52  # late tickets score this plus their arrival number: behind every draw
DRAW_HEX = 13  # hex digits of SHA-1(seed ':' user) that make a draw (52 bits)
MAX_RATE_CHANGES = 10_000  # live rate changes kept per campaign
EXPORT_CHUNK = 5000  # tickets read per round trip by the export


def draw(seed: str, user_id: str) -> int:
    """A pre-queue ticket's draw: what ``queue_join.lua`` computes inside Redis."""
    return int(hashlib.sha1(f"{seed}:{user_id}".encode()).hexdigest()[:DRAW_HEX], 16)


def new_ticket_id() -> str:
    return "t" + secrets.token_hex(16)  # 128 random bits: unguessable, and a valid path id


def new_seed() -> tuple[str, str]:
    seed = secrets.token_hex(32)
    return seed, hashlib.sha256(seed.encode()).hexdigest()


def queue_campaign(c: Campaign) -> None:
    if not c.queued:
        raise InvalidState(f"campaign {c.id!r} is not in queue mode", state="open")


@dataclass(frozen=True, slots=True)
class TicketRecord:
    user_id: str
    storefront: str
    joined_ms: int
    score: int

    @classmethod
    def unpack(cls, raw: bytes | str) -> TicketRecord:
        text = raw.decode() if isinstance(raw, bytes) else raw
        user, storefront, joined, score = text.split("|")
        return cls(user, storefront, int(joined), int(score))

    @property
    def pre_queue(self) -> bool:
        return self.score < LATE


class Queue:
    def __init__(self, definitions: Definitions, scripts: AdmissionScripts) -> None:
        self.definitions = definitions
        self.scripts = scripts
        self.redis = definitions.redis

    async def join(self, campaign_id: str, user_id: str, buyer: Buyer, storefront: str) -> tuple[str, bool]:
        """(ticket, new): the user's ticket, taken now or earlier (or the identity's, under an
        identity cap). Raises ``QueueNotOpen``, ``Closed``, ``NotRegistered``, ``InvalidState``."""
        k = keys.CampaignKeys(campaign_id)
        for _ in range(2):
            d = await self.definitions.read(campaign_id)
            c = d.campaign
            queue_campaign(c)
            assert c.admission is not None and c.admission.queue_opens_at_ms is not None
            identity = identity_of(d, buyer)
            seed, seed_sha = new_seed()
            reply = await run(self.scripts.queue_join,
                              [k.meta, k.admission, k.tickets, k.queue, k.queue_users, k.registrations],
                              [d.fingerprint, c.admission.queue_opens_at_ms, c.opens_at_ms,
                               "1" if c.eligibility == "registered" else "0", "1" if identity else "0",
                               new_ticket_id(), user_id, identity, storefront, seed, seed_sha])
            if reply[0] != Status.DEFINITION_CHANGED:
                break
        if reply[0] != 0:
            raise rejection(reply[0], "", campaign_id)
        return reply[1].decode(), bool(reply[2])

    async def commit_seed(self, campaign_id: str, seed: str | None = None) -> str:
        """Commit the seed now if none is (a given one, for tests and drills; else a fresh one);
        returns the committed seed's SHA-256."""
        seed = seed or new_seed()[0]
        sha = hashlib.sha256(seed.encode()).hexdigest()
        reply = await run(self.scripts.queue_seed, [keys.CampaignKeys(campaign_id).admission], [seed, sha])
        return str(reply[1].decode())

    async def set_rate(self, campaign_id: str, rate: int) -> None:
        """Admit ``rate`` positions per second from now on (0 pauses)."""
        d = await self.definitions.read(campaign_id)
        queue_campaign(d.campaign)
        k = keys.CampaignKeys(campaign_id)
        c = d.campaign
        assert c.admission is not None
        reply = await run(self.scripts.queue_rate, [k.meta, k.admission, k.queue],
                          [rate, MAX_RATE_CHANGES, c.opens_at_ms, c.admission.admit_per_second])
        if reply[0] != 0:
            raise rejection(reply[0], reply[1].decode(), campaign_id)

    async def state(self, campaign_id: str) -> tuple[dict[str, bytes | None], int]:
        """The admission hash's public fields (by ``keys.Admission`` name) and the number of
        tickets, in one round trip."""
        k = keys.CampaignKeys(campaign_id)
        async with self.redis.pipeline(transaction=False) as p:
            p.hmget(k.admission, FIELDS)
            p.zcard(k.queue)
            values, count = await p.execute()
        return dict(zip(FIELDS, values, strict=True)), int(count)

    async def export(self, campaign_id: str, page: int = EXPORT_CHUNK) -> dict[str, Any]:
        """Every ticket in queue order: user, join time, its draw (pre-queue) or arrival number
        (late), its position; the seed once ``opens_at`` has passed (by Redis TIME). Read in pages
        by score; before the opening the positions are those the tickets would have if it opened
        then (two draws alike, at odds of about n^2 / 2^53, would share a page boundary badly)."""
        d = await self.definitions.read(campaign_id)
        c = d.campaign
        queue_campaign(c)
        assert c.admission is not None
        k = keys.CampaignKeys(campaign_id)
        fields, _ = await self.state(campaign_id)
        t = await cast("Awaitable[tuple[int, int]]", self.redis.time())
        now = int(t[0]) * 1000 + int(t[1]) // 1000
        revealed = now >= c.opens_at_ms
        tickets: list[dict[str, Any]] = []
        after = "-inf"
        while True:  # by score, not by rank: a pre-queue join meanwhile shifts ranks, never scores
            chunk = await self.redis.zrangebyscore(k.queue, after, "+inf", start=0, num=page, withscores=True)
            if not chunk:
                break
            records = await cast("Awaitable[list[bytes]]", self.redis.hmget(k.tickets, [i for i, _ in chunk]))
            for raw in records:
                r = TicketRecord.unpack(raw)
                row: dict[str, Any] = {"position": len(tickets) + 1, "user_id": r.user_id,
                                       "joined_at": ms_to_rfc3339(r.joined_ms), "pre_queue": r.pre_queue}
                if r.pre_queue:
                    row["draw"] = r.score
                else:
                    row["arrival"] = r.score - LATE
                tickets.append(row)
            after = f"({int(chunk[-1][1])}"
        seed = fields[keys.Admission.SEED]
        return {
            "campaign_id": c.id, "queue_opens_at": ms_to_rfc3339(c.admission.queue_opens_at_ms or 0),
            "opens_at": ms_to_rfc3339(c.opens_at_ms), "as_of": ms_to_rfc3339(now),
            "seed_sha256": _text(fields[keys.Admission.SEED_SHA]),
            "seed": _text(seed) if revealed else None,
            "draw": f"int(sha1(seed + ':' + user_id).hexdigest()[:{DRAW_HEX}], 16); pre-queue tickets by draw, "
                    "then late tickets by arrival",
            "tickets": tickets,
        }


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode()


def recompute(export: dict[str, Any]) -> list[str]:
    """The user ids in queue order, recomputed from an export with its seed revealed: pre-queue
    tickets by their draw from the seed, then late ones by arrival. Raises ValueError when the
    seed does not match its published hash or a draw does not follow from it."""
    seed = export["seed"]
    if seed is None or hashlib.sha256(seed.encode()).hexdigest() != export["seed_sha256"]:
        raise ValueError("the seed is not revealed, or does not match seed_sha256")
    pre = [t for t in export["tickets"] if t["pre_queue"]]
    for t in pre:
        if draw(seed, t["user_id"]) != t["draw"]:
            raise ValueError(f"user {t['user_id']}: the draw does not follow from the seed")
    late = [t for t in export["tickets"] if not t["pre_queue"]]
    ordered: Iterable[dict[str, Any]] = [*sorted(pre, key=lambda t: draw(seed, t["user_id"])),
                                         *sorted(late, key=lambda t: t["arrival"])]
    return [t["user_id"] for t in ordered]


def schedule_of(c: Campaign, rates: bytes | str | None) -> Schedule:
    assert c.admission is not None and c.admission.admit_per_second is not None
    return Schedule.build(c.opens_at_ms, c.admission.admit_per_second, rates)


__all__ = ["LATE", "Definition", "Queue", "TicketRecord", "draw", "recompute", "schedule_of"]
