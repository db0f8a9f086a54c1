"""The Redis key layout, in one place.

Every key of a campaign carries the campaign's hash tag ``{c:<id>}``, so every script touches
one Redis Cluster slot. Fields inside the hashes use ``|`` as a separator: ids never contain it
(``engine.campaign.ID_PATTERN``), so ``t|<user>|<product>`` is unambiguous.

Every key has a life, said in its row: what a live sale needs stays while the campaign is in
Redis, and ``flashsale campaign archive ID`` (``engine.ledger.archive``) removes every key of a
closed campaign once its ledger holds every order; the ledger keeps the sale for good.

Each key, its type, what it holds, and (after the arrow) when it goes away:

- ``fs:{c:ID}:meta`` hash: the definition: window (ms), hold (ms), price, totals and caps, admin
  flag -> archive.
- ``fs:{c:ID}:counters`` hash: sold / held units, orders, buyers, per-product sold / held,
  rejections by code -> archive.
- ``fs:{c:ID}:users`` hash: per user, units taken (held + confirmed) and confirmed, per campaign
  and product -> archive (the caps need every buyer's while the sale runs).
- ``fs:{c:ID}:res`` hash: reservation id -> msgpack record -> archive (GET, confirm and
  idempotent replays need them until the sale is over).
- ``fs:{c:ID}:idem`` hash: ``<storefront>|<Idempotency-Key>`` -> reservation id -> archive (so
  at least the 24 h the contract promises, and the whole sale).
- ``fs:{c:ID}:holds`` zset: reservation id scored by its deadline (ms), the sweeper's work list
  -> a member leaves when its hold ends (confirm, cancel, expiry).
- ``fs:{c:ID}:events`` stream: every transition, drained by the ledger writer -> entries are
  trimmed once every group acknowledged them; the key at archive.
- ``fs:{c:ID}:rate`` hash: ring of units taken per second over the last two minutes (fixed
  size) -> archive.
- ``fs:{c:ID}:rl`` hash: per-user rate limiter state (GCRA theoretical arrival time, ms) -> a
  field is pruned by the sweeper once its time has passed (``engine.core.prune``); the key at
  archive.
- ``fs:{c:ID}:buyers`` hash: buyer caps, units held + confirmed per ``i|IDENTITY``, ``d|DEVICE``,
  ``n|NETWORK`` -> archive.
- ``fs:{c:ID}:ledger`` hash: what the writer reports, ``persisted_orders``, ``dead_letters``
  -> archive.
- ``fs:{c:ID}:restore:*`` hashes: ``flashsale recover``'s scratch space, renamed or merged into
  place -> the end of each recover run (archive removes any leftover).
- ``fs:{c:ID}:damaged`` hash: reservation id -> ``unreadable`` / ``malformed``, records the
  scripts set aside (kept in ``res`` as they were, for an operator) -> archive.
- ``fs:{c:ID}:reg`` hash: registrations, ``u|UID`` -> ``<ms>|<identity>``; ``i|IDENTITY`` -> UID
  (identity cap) -> archive.
- ``fs:{c:ID}:adm`` hash: ``seed``, ``seed_sha`` (SHA-256), ``seq`` (late arrivals), ``rates``,
  ``nrates`` -> archive.
- ``fs:{c:ID}:tix`` hash: ticket id -> ``UID|STOREFRONT|joined_ms|score`` (immutable once written)
  -> archive.
- ``fs:{c:ID}:queue`` zset: ticket id scored by its place, the pre-queue draw (< 2^52) or 2^52 +
  arrival sequence -> archive.
- ``fs:{c:ID}:qusers`` hash: ``u|UID`` -> ticket; ``i|IDENTITY`` -> ticket under an identity cap
  -> archive.
- ``fs:{c:ID}:qseen`` hash: ticket id -> Redis TIME (ms) of its first poll from the opening on
  (``queue_seen.lua``; a token's expiry counts from the later of the admission and it): one field
  per ticket at most -> archive.
- ``fs:campaigns`` set: every campaign id in Redis (outside any tag: read by the writer, ops and
  the sweeper) -> a member leaves at archive.
- ``fs:archived`` hash: archived campaign id -> JSON (when, orders, units sold) -> kept: one
  small field per archived campaign, so ``reconcile`` can tell an archived campaign from a lost one.
- ``fs:dead`` stream: stream entries the writer gave up on (dead letters) -> the newest
  ``DEAD_LETTERS_MAX`` entries are kept, the rest trimmed and counted in ``fs:dead:trimmed``.
- ``fs:writers`` set / ``fs:writer:NAME`` string: live writers and their figures
  (``engine.ledger.health``) -> the string by its TTL, the member when its writer stops cleanly.

The users hash counts a user's units in the campaign (``t|U``, ``c|U``), of a product (``t|U|P``,
``c|U|P``) and of a product through one storefront (``t|U|P|SF``, ``c|U|P|SF``): the caps bound the
first two, across storefronts; ``GET …/users/{uid}`` shows a storefront the last. The admission
keys (``engine.admission``) survive a replacement of the definition before the opening:
registrations and pre-queue tickets stay.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "fs"
CAMPAIGNS = f"{PREFIX}:campaigns"  # set of every campaign id in Redis (archiving removes one)
ARCHIVED = f"{PREFIX}:archived"  # hash: archived campaign id -> JSON record of the archive
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
    def buyers(self) -> str:
        """Units held + confirmed per buyer signal the campaign caps (``reserve.lua``); returned
        by cancel and expire. Lives as long as the campaign's other keys."""
        return f"{self.tag}:buyers"

    @property
    def ledger(self) -> str:
        return f"{self.tag}:ledger"

    @property
    def damaged(self) -> str:
        return f"{self.tag}:damaged"

    # -- admission (engine.admission): registrations, the waiting room ---------------------

    @property
    def registrations(self) -> str:
        return f"{self.tag}:reg"

    @property
    def admission(self) -> str:
        return f"{self.tag}:adm"

    @property
    def tickets(self) -> str:
        return f"{self.tag}:tix"

    @property
    def queue(self) -> str:
        return f"{self.tag}:queue"

    @property
    def queue_users(self) -> str:
        return f"{self.tag}:qusers"

    @property
    def first_polls(self) -> str:
        return f"{self.tag}:qseen"

    def admission_keys(self) -> list[str]:
        """The admission part's keys (they go with the campaign's, on archive)."""
        return [self.registrations, self.admission, self.tickets, self.queue, self.queue_users, self.first_polls]

    def all(self) -> list[str]:
        """Every key of the campaign (for recovery, the archive and tests)."""
        return [
            self.meta, self.counters, self.users, self.reservations, self.idempotency,
            self.holds, self.events, self.rate, self.ratelimit, self.ledger, self.damaged,
            self.buyers, *self.admission_keys(),
        ]


def campaign_of_stream(stream_key: str) -> str:
    """The campaign id of an events stream key: ``fs:{c:ID}:events`` -> ``ID``."""
    head = f"{PREFIX}:{{c:"
    if not (stream_key.startswith(head) and stream_key.endswith("}" + EVENTS_SUFFIX)):
        raise ValueError(f"not a flashsale events stream: {stream_key!r}")
    return stream_key[len(head) : -len("}" + EVENTS_SUFFIX)]
