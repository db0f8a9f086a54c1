"""A campaign's state rebuilt from its history: what reconcile compares and recover restores.

The history is the ledger's ``events`` plus the stream entries not yet drained, merged by stream
entry id. Replaying it gives each reservation's last state, with one rule: a confirm is final.
Money was taken; if the history holds anything after a confirm (a Redis that lost the confirm
may since have expired the hold), the reservation stays confirmed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine import keys
from engine.events import Event
from engine.ledger.sink import entry_key

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
