"""The Redis key layout, in one place.

Every key of a campaign carries the campaign's hash tag ``{c:<id>}``, so every script touches
one Redis Cluster slot. Fields inside the hashes use ``|`` as a separator: ids never contain it
(``engine.campaign.ID_PATTERN``), so ``t|<user>|<product>`` is unambiguous.

| key | type | what |
|---|---|---|
| ``fs:{c:ID}:meta`` | hash | the definition: window (ms), hold (ms), price, totals and caps, admin flag |
| ``fs:{c:ID}:counters`` | hash | sold / held units, orders, buyers, per-product sold / held, rejections by code |
| ``fs:{c:ID}:users`` | hash | per user: units taken (held + confirmed) and confirmed, per campaign and product |
| ``fs:{c:ID}:res`` | hash | reservation id -> JSON record |
| ``fs:{c:ID}:idem`` | hash | ``<storefront>|<Idempotency-Key>`` -> reservation id |
| ``fs:{c:ID}:holds`` | zset | reservation id scored by its deadline (ms); the sweeper's work list |
| ``fs:{c:ID}:events`` | stream | every transition, drained by the ledger writer |
| ``fs:{c:ID}:rate`` | hash | ring of units taken per second over the last two minutes |
| ``fs:{c:ID}:rl`` | hash | per-user rate limiter state (GCRA theoretical arrival time, ms) |
| ``fs:{c:ID}:ledger`` | hash | what the writer reports: ``persisted_orders`` |
| ``fs:campaigns`` | set | every campaign id ever loaded (outside any tag: read by the writer and ops) |
| ``fs:dead`` | stream | stream entries the writer gave up on (dead letters) |
| ``fs:writers`` / ``fs:writer:NAME`` | set / string, TTL | live writers and their figures (``engine.ledger.health``) |
| ``fs:{c:ID}:restore:*`` | hashes | ``flashsale recover``'s scratch space, renamed or merged into place atomically |
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "fs"
CAMPAIGNS = f"{PREFIX}:campaigns"  # set of every campaign id ever loaded
DEAD_LETTERS = f"{PREFIX}:dead"  # dead-letter stream of the ledger writer
DEAD_LETTERS_MAX = 100_000  # fs:dead keeps the newest this many entries; older ones are trimmed
DEAD_LETTERS_TRIMMED = f"{PREFIX}:dead:trimmed"  # count of dead letters trimmed off fs:dead
EVENTS_SUFFIX = ":events"


@dataclass(frozen=True, slots=True)
class CampaignKeys:
    """The keys of one campaign, all under its hash tag."""

    campaign_id: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{c:{self.campaign_id}}}"

    @property
    def meta(self) -> str:
        return f"{self.tag}:meta"

    @property
    def counters(self) -> str:
        return f"{self.tag}:counters"

    @property
    def users(self) -> str:
        return f"{self.tag}:users"

    @property
    def reservations(self) -> str:
        return f"{self.tag}:res"

    @property
    def idempotency(self) -> str:
        return f"{self.tag}:idem"

    @property
    def holds(self) -> str:
        return f"{self.tag}:holds"

    @property
    def events(self) -> str:
        return f"{self.tag}{EVENTS_SUFFIX}"

    @property
    def rate(self) -> str:
        return f"{self.tag}:rate"

    @property
    def ratelimit(self) -> str:
        return f"{self.tag}:rl"

    @property
    def ledger(self) -> str:
        return f"{self.tag}:ledger"

    def all(self) -> list[str]:
        """Every key of the campaign (for recovery and tests)."""
        return [
            self.meta, self.counters, self.users, self.reservations, self.idempotency,
            self.holds, self.events, self.rate, self.ratelimit, self.ledger,
        ]


def campaign_of_stream(stream_key: str) -> str:
    """The campaign id of an events stream key: ``fs:{c:ID}:events`` -> ``ID``."""
    head = f"{PREFIX}:{{c:"
    if not (stream_key.startswith(head) and stream_key.endswith("}" + EVENTS_SUFFIX)):
        raise ValueError(f"not a flashsale events stream: {stream_key!r}")
    return stream_key[len(head) : -len("}" + EVENTS_SUFFIX)]
