"""A campaign's state rebuilt from its history: what reconcile compares and recover restores.

The history is the ledger's ``events`` plus the stream entries not yet drained, merged by stream
entry id. Replaying it gives each reservation's last state, with one rule: a confirm is final.
Money was taken; if the history holds anything after a confirm (a Redis that lost the confirm
may since have expired the hold), the reservation stays confirmed.

A whole sale is never held: ``by_user`` reads the ledger ordered by user and reservation, a page
at a time, merges in the undrained stream's events, and hands on whole users' reservations a
page at a time; ``Tally`` sums what the campaign and its products need across those pages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from engine import keys
from engine.events import Event
from engine.ledger.sink import Sink, entry_key

B, U = keys.Buyers, keys.Users
STATE_OF = {"reserved": "held", "confirmed": "confirmed", "cancelled": "cancelled", "expired": "expired"}


@dataclass(slots=True)
class ResState:
    """A reservation as its history tells it (mutable while replaying)."""

    reservation_id: str
    product_id: str
    user_id: str
    units: int
    amount: int
    state: str
    created_ms: int = 0
    expires_ms: int = 0
    storefront: str = ""
    payment_ref: str = ""
    confirmed_ms: int = 0
    idempotency_key: str = ""  # "" when unknown (a reserved event written before events carried it)
    identity: str = ""  # the buyer signals the campaign's caps counted ("" none, or not capped)
    device: str = ""
    network: str = ""


def merge(*histories: Sequence[Event]) -> list[Event]:
    """Events of several sources (each in stream order), each entry id once, in stream order."""
    present = [h for h in histories if h]
    if len(present) <= 1:
        return list(present[0]) if present else []
    by_id: dict[str, Event] = {}
    for events in histories:
        for e in events:
            by_id.setdefault(e.entry_id, e)
    return sorted(by_id.values(), key=lambda e: entry_key(e.entry_id))


def replay(events: Iterable[Event]) -> dict[str, ResState]:
    """Each reservation's last state (events in stream order)."""
    out: dict[str, ResState] = {}
    for e in events:
        r = out.get(e.reservation_id)
        if r is None:
            r = out[e.reservation_id] = ResState(e.reservation_id, e.product_id, e.user_id, e.units, e.amount,
                                                 STATE_OF[e.type], created_ms=e.at_ms)
        elif r.state == "confirmed":
            continue
        r.state = STATE_OF[e.type]
        if e.type == "reserved":
            r.created_ms, r.expires_ms, r.storefront = e.at_ms, e.expires_at_ms or 0, e.storefront or ""
            r.idempotency_key = e.idempotency_key or ""
            r.identity, r.device, r.network = e.identity or "", e.device or "", e.network or ""
        elif e.type == "confirmed":
            r.payment_ref, r.confirmed_ms = e.payment_ref or "", e.at_ms
    return out


def idempotency(states: Iterable[ResState]) -> dict[str, str]:
    """The idempotency hash the reservations make: ``<storefront>|<key>`` -> reservation id, for
    each whose key is known (events stored before the ``reserved`` event carried the key have
    none: those cannot be rebuilt). Should a key have made two reservations, the first one keeps it."""
    out: dict[str, str] = {}
    for r in states:
        if r.idempotency_key:
            out.setdefault(keys.idempotency_field(r.storefront, r.idempotency_key), r.reservation_id)
    return out


@dataclass(frozen=True, slots=True)
class Totals:
    """What the counters and users hashes should hold (``engine/keys.py`` field names)."""

    sold: int = 0
    held: int = 0
    orders: int = 0
    buyers: int = 0
    product_sold: dict[str, int] = field(default_factory=dict)
    product_held: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)  # t|u, c|u, t|u|p, c|u|p, t|u|p|sf, c|u|p|sf; no zeros
    buyer_units: dict[str, int] = field(default_factory=dict)  # the buyers hash: i|ID, d|DEVICE, n|NETWORK; no zeros


def totals(states: Iterable[ResState]) -> Totals:
    sold = held = orders = 0
    p_sold: dict[str, int] = defaultdict(int)
    p_held: dict[str, int] = defaultdict(int)
    users: dict[str, int] = defaultdict(int)
    signals: dict[str, int] = defaultdict(int)
    for r in states:
        if r.state not in ("held", "confirmed"):
            continue
        if r.identity:
            signals[B.IDENTITY + r.identity] += r.units
        if r.device:
            signals[B.DEVICE + r.device] += r.units
        if r.network:
            signals[B.NETWORK + r.network] += r.units
        users[U.taken(r.user_id)] += r.units
        users[U.taken(r.user_id, r.product_id)] += r.units
        users[U.taken(r.user_id, r.product_id, r.storefront)] += r.units
        if r.state == "held":
            held += r.units
            p_held[r.product_id] += r.units
        else:
            sold += r.units
            orders += 1
            p_sold[r.product_id] += r.units
            users[U.confirmed(r.user_id)] += r.units
            users[U.confirmed(r.user_id, r.product_id)] += r.units
            users[U.confirmed(r.user_id, r.product_id, r.storefront)] += r.units
    buyers = sum(1 for f in users if f.startswith(U.CONFIRMED) and f.count("|") == 1)
    return Totals(sold, held, orders, buyers, dict(p_sold), dict(p_held), dict(users), dict(signals))


@dataclass(slots=True)
class Tally:
    """The campaign's and its products' totals, summed over pages of whole users."""

    sold: int = 0
    held: int = 0
    orders: int = 0
    buyers: int = 0
    product_sold: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    product_held: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, t: Totals) -> None:
        self.sold += t.sold
        self.held += t.held
        self.orders += t.orders
        self.buyers += t.buyers
        for p, n in t.product_sold.items():
            self.product_sold[p] += n
        for p, n in t.product_held.items():
            self.product_held[p] += n


Users = Callable[[list[ResState]], Awaitable[None]]  # takes a page of whole users' reservations


def _order(e: Event) -> tuple[str, str, int, int]:
    return (e.user_id, e.reservation_id, *entry_key(e.entry_id))


class _ByUser:
    """Events in (user, reservation, stream) order, from two sorted sources, each entry once:
    each reservation replayed when its last event is in, whole users handed on ``page`` at a time."""

    def __init__(self, stream: Iterable[Event], page: int, each: Users) -> None:
        self.stream = iter(stream)
        self.head = next(self.stream, None)  # the stream's next event
        self.page, self.each = page, each
        self.current: list[Event] = []  # the events of the reservation being read
        self.users: list[ResState] = []  # whole users' reservations (and the current user's)
        self.ledger_events = 0

    async def ledger(self, events: list[Event]) -> None:
        self.ledger_events += len(events)
        for e in events:
            order = _order(e)
            while self.head is not None and _order(self.head) <= order:
                await self._one(self.head)
                self.head = next(self.stream, None)
            await self._one(e)

    async def finish(self) -> None:
        while self.head is not None:
            await self._one(self.head)
            self.head = next(self.stream, None)
        self._close()
        if self.users:
            await self.each(self.users)
        self.users = []

    async def _one(self, e: Event) -> None:
        if self.current and self.current[-1].entry_id == e.entry_id and self.current[-1].reservation_id == \
                e.reservation_id:
            return  # the same entry, from the ledger and from the stream
        if self.current and self.current[-1].reservation_id != e.reservation_id:
            user = self.current[-1].user_id
            self._close()
            if e.user_id != user and len(self.users) >= self.page:
                await self.each(self.users)
                self.users = []
        self.current.append(e)

    def _close(self) -> None:
        if self.current:
            self.users += replay(self.current).values()
            self.current = []


async def by_user(sink: Sink, campaign_id: str, upto: str, stream: Iterable[Event], page: int,
                  each: Users) -> int:
    """Replay the ledger's history up to stream entry ``upto`` merged with ``stream`` (the
    undrained entries, in (user, reservation, stream) order: ``engine.ledger.spool``), handing
    ``each`` the reservations of whole users, by user then reservation id, at least ``page``
    reservations at a time (the last may have fewer). Python holds one page of the ledger and one
    page of users (and what ``stream`` holds). Returns the ledger events read."""
    merged = _ByUser(stream, page, each)
    await sink.history_by_user(campaign_id, upto, page, merged.ledger)
    await merged.finish()
    return merged.ledger_events
