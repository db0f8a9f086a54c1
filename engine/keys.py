"""The Redis data layout, in one place: keys, hash fields, the reservation record, stream events.

The Lua scripts (``engine/lua``) write these names out (they cannot import them);
``tests/core/test_layout.py`` checks that every name a script uses is declared here and every
name declared here is used by some script. Python code names them through this module only.

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
- ``fs:{c:ID}:restore:*`` hashes and a list: ``flashsale recover``'s scratch space, renamed into
  place (the list: the holds it drops) -> the end of each recover run (archive removes any leftover).
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
- ``fs:{c:ID}:stock`` hash (bucketed campaigns only): the central reserve's free units, ``all``
  and ``p|PID`` (``Stock``) -> archive.
- ``fs:{c:ID}:xout`` hash (bucketed campaigns only): transfer id -> ``n,ms,stock key,xin key,
  field,...``, the stock moves this stock hash debited and not yet settled (``stock_debit.lua``)
  -> a field leaves when its transfer settles (``stock_settle.lua``): at most a few per bucket.
- ``fs:{c:ID}:xin`` zset (bucketed campaigns only): transfer ids credited here, scored by their
  debit's ms (``stock_credit.lua``) -> a member is pruned by the credit script once
  ``TRANSFER_KEEP_MS`` old.
- ``fs:{c:ID#B.S}:stock`` / ``:xout`` / ``:xin``: the same for bucket B of a campaign with
  ``stock_buckets`` > 1; ``S`` is a salt that places the bucket's slot (``engine.core.buckets``)
  -> archive (not built yet for buckets).
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
from typing import Any

import msgpack

PREFIX = "fs"
CAMPAIGNS = f"{PREFIX}:campaigns"  # set of every campaign id in Redis (archiving removes one)
ARCHIVED = f"{PREFIX}:archived"  # hash: archived campaign id -> JSON record of the archive
DEAD_LETTERS = f"{PREFIX}:dead"  # dead-letter stream of the ledger writer
DEAD_LETTERS_MAX = 100_000  # fs:dead keeps the newest this many entries; older ones are trimmed
DEAD_LETTERS_TRIMMED = f"{PREFIX}:dead:trimmed"  # count of dead letters trimmed off fs:dead
EVENTS_SUFFIX = ":events"
WRITERS = f"{PREFIX}:writers"  # set of the ledger writers' names (``engine.ledger.health``)
LIVENESS_PREFIX = f"{PREFIX}:writer:"  # + name: a live writer's JSON figures, with a TTL


def liveness_key(consumer: str) -> str:
    """``fs:writer:NAME``: a live writer's latest figures, gone by its TTL when the writer dies."""
    return LIVENESS_PREFIX + consumer


TRANSFER_KEEP_MS = 24 * 3600 * 1000  # a credited transfer's id is kept this long (replays are refused)
TRANSFER_CREDIT_MS = 3600 * 1000  # a transfer older than this is never credited any more: undone


class StockKeys:
    """The stock keys of one hash tag: the central reserve's (the campaign's tag) or a bucket's."""

    __slots__ = ()

    @property
    def tag(self) -> str:
        raise NotImplementedError

    @property
    def stock(self) -> str:
        """Free units: ``all`` (the campaign's) and ``p|PID`` (a product's), ``Stock``."""
        return f"{self.tag}:stock"

    @property
    def transfers_out(self) -> str:
        """Transfer id -> ``n,ms,stock key,xin key,field,...``: debited here, not yet settled."""
        return f"{self.tag}:xout"

    @property
    def transfers_in(self) -> str:
        """Transfer ids credited here, scored by their debit's ms (replays of a credit are no-ops)."""
        return f"{self.tag}:xin"

    def stock_keys(self) -> list[str]:
        return [self.stock, self.transfers_out, self.transfers_in]


@dataclass(frozen=True, slots=True)
class BucketKeys(StockKeys):
    """The keys of bucket ``bucket`` of a bucketed campaign: tag ``{c:ID#B.S}`` (``#`` is in no
    campaign id, so no campaign's own tag is a bucket's); the salt ``S`` places its slot
    (``engine.core.buckets.place``)."""

    campaign_id: str
    bucket: int
    salt: int

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{c:{self.campaign_id}#{self.bucket}.{self.salt}}}"


@dataclass(frozen=True, slots=True)
class CampaignKeys(StockKeys):
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

    def staged(self) -> list[str]:
        """``flashsale recover``'s staged copies of the counters, users, records and idempotency
        hash and the buyers hash (``restore.lua`` renames them into place)."""
        return [f"{self.tag}:restore:{name}" for name in ("counters", "users", "res", "idem", "buyers")]

    @property
    def staged_dropped(self) -> str:
        """``flashsale recover``'s list of the holds it drops (``rid|pid|uid|units|amount``), whose
        events ``restore.lua`` appends a step at a time."""
        return f"{self.tag}:restore:dropped"

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


# -- hash fields ------------------------------------------------------------------------------
# Each class below names the fields of one hash; a name ending in ``|`` is the head of a field
# pattern (``sold|`` + product id), built by the functions beside it.


class Meta:
    """``fs:{c:ID}:meta``: written by ``load.lua``; ``flag`` moved by ``admin.lua``."""

    DEF = "def"  # the definition, canonical JSON
    OPENS = "opens"  # window, ms since the epoch
    CLOSES = "closes"
    HOLD = "hold"  # hold duration, ms
    PRICE = "price"  # unit price, minor units
    TOTAL = "total"  # units of the campaign
    CAP = "cap"  # per-user campaign cap (absent: none)
    FLAG = "flag"  # admin flag (``Flag``)
    FLAG_BEFORE_RECOVERY = "flag_before_recovery"  # the flag ``recover`` puts back
    RL_RATE = "rl_rate"  # rate limit: attempts per user per second
    RL_BURST = "rl_burst"  # ... and its burst
    PRODUCTS = "products"  # number of products
    ICAP = "icap"  # v1.1 buyer caps (units; absent: none): identity, device, network
    DCAP = "dcap"
    NCAP = "ncap"
    ELIG = "elig"  # ``registered`` when only registered users may reserve (absent: anyone)
    QUEUE = "queue"  # ``1`` in queue mode (absent: open)
    PRODUCT_TOTAL = "total|"  # + product id: the product's units
    PRODUCT_CAP = "cap|"  # + product id: its per-user cap (absent: none)


class Flag:
    """The values of meta ``flag``."""

    ACTIVE = "active"
    PAUSED = "paused"
    CLOSED = "closed"
    RECOVERING = "recovering"


class MetaValue:
    """The values of meta ``elig`` and ``queue`` when set."""

    ELIG_REGISTERED = "registered"
    QUEUE_ON = "1"


class Counters:
    """``fs:{c:ID}:counters``: what the scripts count."""

    SOLD = "sold"  # units in confirmed orders
    HELD = "held"  # units in unpaid holds
    ORDERS = "orders"  # confirmed orders
    BUYERS = "buyers"  # users with at least one confirmed unit
    DAMAGED = "damaged"  # records set aside (``Damaged``)
    PRODUCT_SOLD = "sold|"  # + product id
    PRODUCT_HELD = "held|"  # + product id
    REJECTED = "rej|"  # + rejection name (``engine.status.Status``): requests refused so

    @staticmethod
    def sold(product_id: str) -> str:
        return f"{Counters.PRODUCT_SOLD}{product_id}"

    @staticmethod
    def held(product_id: str) -> str:
        return f"{Counters.PRODUCT_HELD}{product_id}"


class Users:
    """``fs:{c:ID}:users``: a user's units, taken (held + confirmed: ``t|``) and confirmed
    (``c|``), in the campaign (``t|U``), of a product (``t|U|P``), of a product through one
    storefront (``t|U|P|SF``)."""

    TAKEN = "t|"
    CONFIRMED = "c|"

    @staticmethod
    def taken(user_id: str, product_id: str | None = None, storefront: str | None = None) -> str:
        return _field(Users.TAKEN, user_id, product_id, storefront)

    @staticmethod
    def confirmed(user_id: str, product_id: str | None = None, storefront: str | None = None) -> str:
        return _field(Users.CONFIRMED, user_id, product_id, storefront)


def idempotency_field(storefront: str, key: str) -> str:
    """The field of ``fs:{c:ID}:idem`` that names the reservation made with an Idempotency-Key."""
    return f"{storefront}|{key}"


def _field(head: str, *parts: str | None) -> str:
    return head + "|".join(p for p in parts if p is not None)


class Buyers:
    """``fs:{c:ID}:buyers``: units held + confirmed per buyer signal a cap counts."""

    IDENTITY = "i|"
    DEVICE = "d|"
    NETWORK = "n|"


class Stock:
    """``fs:{c:ID}:stock`` and each bucket's: free units of the campaign and of each product."""

    ALL = "all"  # the campaign's units
    PRODUCT = "p|"  # + product id: the product's units

    @staticmethod
    def product(product_id: str) -> str:
        return f"{Stock.PRODUCT}{product_id}"


class Ledger:
    """``fs:{c:ID}:ledger``: what the ledger writers report."""

    PERSISTED_ORDERS = "persisted_orders"  # orders the ledger holds (never moves backwards)
    DEAD_LETTERS = "dead_letters"  # entries of the campaign parked in ``fs:dead``


class Rate:
    """``fs:{c:ID}:rate``: a ring of ``RING`` one-second slots: ``s<slot>`` the second (epoch s)
    the slot counts, ``u<slot>`` the units taken in it."""

    SECOND = "s"
    UNITS = "u"
    RING = 120


class Registrations:
    """``fs:{c:ID}:reg``: ``u|UID`` -> ``<ms>|<identity>``; ``i|IDENTITY`` -> UID (identity cap)."""

    USER = "u|"
    IDENTITY = "i|"


class QueueUsers:
    """``fs:{c:ID}:qusers``: ``u|UID`` -> ticket; ``i|IDENTITY`` -> ticket (identity cap)."""

    USER = "u|"
    IDENTITY = "i|"


class Admission:
    """``fs:{c:ID}:adm``: the waiting room's seed, late arrivals, rate changes."""

    SEED = "seed"
    SEED_SHA = "seed_sha"  # SHA-256 of the seed, published before the order is revealed
    SEQ = "seq"  # late arrivals so far
    RATES = "rates"  # ``at_ms:rate:base,...`` (``engine.admission.schedule``)
    NRATES = "nrates"  # how many rate changes


class Damaged:
    """The values of ``fs:{c:ID}:damaged`` (reservation id -> why it was set aside)."""

    UNREADABLE = "unreadable"  # cmsgpack cannot read it
    MALFORMED = "malformed"  # its fields have the wrong type or shape


HASH_FIELDS: tuple[type, ...] = (Meta, Counters, Users, Buyers, Ledger, Rate, Registrations, QueueUsers,
                                 Admission, Stock)
"""The classes that name hash fields (``Flag``, ``MetaValue``, ``Damaged``: values of fields)."""


def names(namespace: type) -> dict[str, str]:
    """The names one of the classes above declares: attribute -> name."""
    return {a: v for a, v in vars(namespace).items() if a.isupper() and isinstance(v, str)}


# -- the reservation record -------------------------------------------------------------------
# ``fs:{c:ID}:res`` maps a reservation id to the msgpack of an array: ``RECORD`` (11 values), or
# under buyer caps ``RECORD + RECORD_BUYER`` (14): the signals the caps counted ('' for a
# dimension not capped), which cancel and expire give back. ``reserve.lua`` writes it,
# ``confirm.lua`` sets state, ref and confirmed_ms, ``includes/records.lua`` checks its shape.

RECORD = ("state", "product", "user", "units", "amount", "expires_ms", "created_ms", "storefront", "key",
          "ref", "confirmed_ms")
RECORD_BUYER = ("identity", "device", "network")
STATES = ("held", "confirmed", "cancelled", "expired")  # the values of ``state``
_N = len(RECORD)
_ARITIES = (_N, _N + len(RECORD_BUYER))


@dataclass(slots=True)
class Record:
    """One reservation record, as stored (field order: ``RECORD``, ``RECORD_BUYER``). Not frozen:
    every reservation reply decodes one, and a frozen dataclass costs twice as much to build."""

    state: str
    product: str
    user: str
    units: int
    amount: int  # minor units
    expires_ms: int
    created_ms: int
    storefront: str
    key: str  # the Idempotency-Key ('' unknown)
    ref: str  # the payment reference ('' until confirmed)
    confirmed_ms: int  # 0 until confirmed
    identity: str | None = None  # the buyer signals (None: a record of 11 values)
    device: str | None = None
    network: str | None = None


def unpack_record(packed: bytes) -> Record:
    """A stored record; ``ValueError`` (``msgpack``'s errors included) or ``TypeError`` for one
    that is not a record of 11 or 14 values."""
    r: Any = msgpack.unpackb(packed, raw=False)
    if type(r) is not list or len(r) not in _ARITIES:
        raise ValueError(f"a reservation record has 11 or 14 values, not {len(r) if isinstance(r, list) else r!r}")
    st, pid, uid, units, amount, exp, created, sf, key, ref, confirmed = r[:_N]
    return Record(st, pid, uid, int(units), int(amount), int(exp), int(created), sf, key or "", ref or "",
                  int(confirmed), *r[_N:])


def pack_record(r: Record) -> bytes:
    """The msgpack ``reserve.lua`` would store for ``r`` (11 values when it has no buyer signals)."""
    values: list[Any] = [r.state, r.product, r.user, r.units, r.amount, r.expires_ms, r.created_ms, r.storefront,
                         r.key, r.ref, r.confirmed_ms]
    if r.identity is not None:
        values += [r.identity, r.device or "", r.network or ""]
    packed: bytes = msgpack.packb(values)
    return packed


def record_owner(packed: bytes) -> str | None:
    """The storefront a damaged record still names, if that much of it can be read (as
    ``includes/records.lua`` reads it)."""
    try:
        r = msgpack.unpackb(packed, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    at = RECORD.index("storefront")
    return r[at] if isinstance(r, list) and len(r) > at and isinstance(r[at], str) else None


# -- stream events ----------------------------------------------------------------------------
# The fields of one entry of ``fs:{c:ID}:events`` (what each means: ``engine.events``).


class EventField:
    """The fields of a stream entry."""

    TYPE = "e"  # ``EVENT_TYPES``
    RID = "rid"
    PID = "pid"
    UID = "uid"
    UNITS = "units"
    AMOUNT = "amount"
    AT = "at"
    SF = "sf"  # reserved
    EXP = "exp"  # reserved
    KEY = "key"  # reserved
    REF = "ref"  # confirmed
    IDENTITY = "bi"  # reserved, under buyer caps
    DEVICE = "bd"
    NETWORK = "bn"


EVENT_TYPES = ("reserved", "confirmed", "cancelled", "expired")
