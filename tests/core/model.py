"""A pure-Python reference model of one campaign in the reservation core, as docs/API.md describes it.

No Redis, no batching, no clock: a hold is "overdue" only when a test says so (it rewrites the
real hold's deadline to the past), and the sale opens when a test opens it.

The v1.1 gates are off unless set: buyer caps (``caps``: identity, device, network), eligibility
``registered`` (``registrations``, taken before the opening only) and queue mode (``queued``: a
reserve carries an admission token, named by what it is: ``valid``, ``none``, ``forged``,
``other`` (another user's), ``expired``). Each operation returns what the engine must answer: ``Ok``
(the reservation as the caller sees it) or ``Refused`` (the public code and its details).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

HELD, CONFIRMED, CANCELLED, EXPIRED = "held", "confirmed", "cancelled", "expired"


@dataclass(frozen=True)
class ProductDef:
    total: int
    cap: int | None


@dataclass
class Res:
    rid: str
    storefront: str
    key: str
    product: str
    user: str
    units: int
    amount: int
    state: str = HELD
    overdue: bool = False  # past its deadline, not yet released
    ref: str | None = None
    signals: tuple[str, str, str] = ("", "", "")  # identity, device, network the caps counted

    @property
    def visible_state(self) -> str:
        """What a reader sees: a hold past its deadline reads as expired before it is swept."""
        return EXPIRED if self.state == HELD and self.overdue else self.state


@dataclass(frozen=True)
class Ok:
    rid: str | None  # None: a new reservation, its id is the engine's to choose
    replayed: bool
    state: str
    product: str
    user: str
    units: int
    amount: int
    ref: str | None = None


@dataclass(frozen=True)
class Refused:
    code: str
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: str
    rid: str
    product: str
    user: str
    units: int
    amount: int
    ref: str | None = None


#: a buyer cap's dimension, and the request field that must carry its signal
DIMENSIONS = (("identity", "buyer.identity"), ("device", "buyer.device"), ("network", "buyer.ip"))
#: what a reserve's admission token is -> the refusal it earns in queue mode (None: admitted)
TOKENS: dict[str, str | None] = {"valid": None, "none": "ADMISSION_REQUIRED", "forged": "ADMISSION_INVALID",
                                 "other": "ADMISSION_INVALID", "expired": "ADMISSION_EXPIRED"}
NO_SIGNALS: tuple[str | None, str | None, str | None] = (None, None, None)


class Model:
    def __init__(self, *, total: int, cap: int | None, products: dict[str, ProductDef], price: int,
                 caps: tuple[int | None, int | None, int | None] = (None, None, None),
                 queued: bool = False, registered: bool = False, opened: bool = True) -> None:
        self.total = total
        self.cap = cap
        self.products = products
        self.price = price
        self.caps = caps  # identity, device, network: units held + confirmed per signal
        self.queued = queued
        self.registered = registered
        self.opened = opened
        self.registrations: dict[str, str] = {}  # user -> identity ('' when none kept)
        self.paused = False
        self.reservations: dict[str, Res] = {}
        self.idem: dict[tuple[str, str], str] = {}
        self.rejections: Counter[str] = Counter()
        self.events: list[Event] = []

    # -- derived state -------------------------------------------------------------------

    def units(self, *, state: str, product: str | None = None, user: str | None = None,
              storefront: str | None = None) -> int:
        return sum(r.units for r in self.reservations.values()
                   if r.state == state and (product is None or r.product == product)
                   and (user is None or r.user == user) and (storefront is None or r.storefront == storefront))

    def taken(self, user: str, product: str | None = None) -> int:
        """Units a user holds or has bought (what the caps bound)."""
        return self.units(state=HELD, user=user, product=product) + self.units(
            state=CONFIRMED, user=user, product=product)

    def buyers(self) -> int:
        return len({r.user for r in self.reservations.values() if r.state == CONFIRMED})

    def signal_units(self) -> dict[str, int]:
        """The buyers hash as it must read: units held + confirmed per capped signal, by field."""
        out: Counter[str] = Counter()
        for r in self.reservations.values():
            if r.state in (HELD, CONFIRMED):
                for prefix, signal in zip("idn", r.signals, strict=True):
                    if signal:
                        out[f"{prefix}|{signal}"] += r.units
        return dict(out)

    def counted(self, signals: tuple[str | None, str | None, str | None]) -> tuple[str, str, str]:
        """The signals the caps count ('' for a dimension the campaign does not cap)."""
        i, d, n = ((s or "") if cap is not None else "" for s, cap in zip(signals, self.caps, strict=True))
        return i, d, n

    # -- operations ----------------------------------------------------------------------

    def _refuse(self, code: str, counted: bool = True, **details: object) -> Refused:
        if counted:
            self.rejections[code] += 1
        return Refused(code, details)

    def _ok(self, r: Res, replayed: bool, new: bool = False) -> Ok:
        return Ok(None if new else r.rid, replayed, r.visible_state, r.product, r.user, r.units, r.amount,
                  r.ref if r.state == CONFIRMED else None)

    def register(self, user: str, identity: str | None) -> bool | Refused:
        """A pre-registration: True new, False already registered, or the refusal."""
        icap = self.caps[0]
        if icap is not None and identity is None:  # the request is judged before the campaign
            return self._refuse("INVALID", counted=False, field="buyer.identity")
        if self.opened:
            return self._refuse("CLOSED", counted=False)
        if user in self.registrations:
            return False
        kept = (identity or "") if icap is not None else ""
        if kept and any(i == kept and u != user for u, i in self.registrations.items()):
            return self._refuse("BUYER_CAP_EXCEEDED", counted=False, dimension="identity", allowed=0)
        self.registrations[user] = kept
        return True

    def reserve(self, storefront: str, key: str, user: str, product: str, units: int,
                signals: tuple[str | None, str | None, str | None] = NO_SIGNALS,
                token: str = "valid") -> Ok | Refused:
        """The decision; on a new reservation call ``add`` with the engine's id."""
        for (_, field_name), signal, cap in zip(DIMENSIONS, signals, self.caps, strict=True):
            if cap is not None and signal is None:
                return self._refuse("INVALID", counted=False, field=field_name)
        counted = self.counted(signals)
        prior = self.idem.get((storefront, key))
        if prior is not None:
            r = self.reservations[prior]
            if (r.product, r.user, r.units, r.signals) != (product, user, units, counted):
                return self._refuse("IDEMPOTENCY_KEY_REUSED")
            return self._ok(r, replayed=True)
        p = self.products.get(product)
        if p is None:
            return self._refuse("NOT_FOUND", counted=False, what="product")
        if not self.opened:
            return self._refuse("NOT_OPEN")
        if self.paused:
            return self._refuse("PAUSED")
        refusal = TOKENS[token] if self.queued else None
        if refusal is not None:
            return self._refuse(refusal)
        if self.registered and user not in self.registrations:
            return self._refuse("NOT_REGISTERED")
        allowed: int | None = None
        if p.cap is not None:
            allowed = p.cap - self.taken(user, product)
        if self.cap is not None:
            a = self.cap - self.taken(user)
            allowed = a if allowed is None else min(allowed, a)
        if allowed is not None and units > allowed:
            return self._refuse("USER_CAP_EXCEEDED", allowed=max(allowed, 0))
        taken = self.signal_units()
        for (dimension, _), prefix, signal, cap in zip(DIMENSIONS, "idn", counted, self.caps, strict=True):
            if cap is not None and units > cap - taken.get(f"{prefix}|{signal}", 0):
                return self._refuse("BUYER_CAP_EXCEEDED", dimension=dimension,
                                    allowed=max(cap - taken.get(f"{prefix}|{signal}", 0), 0))
        used_p = self.units(state=HELD, product=product) + self.units(state=CONFIRMED, product=product)
        used = self.units(state=HELD) + self.units(state=CONFIRMED)
        remaining = min(p.total - used_p, self.total - used)
        if remaining <= 0:
            return self._refuse("SOLD_OUT")
        if units > remaining:
            return self._refuse("INSUFFICIENT_STOCK", remaining=remaining)
        return Ok(None, False, HELD, product, user, units, units * self.price)

    def add(self, rid: str, storefront: str, key: str, user: str, product: str, units: int,
            signals: tuple[str | None, str | None, str | None] = NO_SIGNALS) -> None:
        r = Res(rid, storefront, key, product, user, units, units * self.price, signals=self.counted(signals))
        self.reservations[rid] = r
        self.idem[storefront, key] = rid
        self._event("reserved", r)

    def _event(self, kind: str, r: Res) -> None:
        self.events.append(Event(kind, r.rid, r.product, r.user, r.units, r.amount,
                                 r.ref if kind == CONFIRMED else None))

    def _release(self, r: Res, state: str) -> None:
        r.state = state
        r.overdue = False
        self._event(state, r)

    def mine(self, rid: str, storefront: str) -> Res | None:
        """The reservation as the storefront may see it: another storefront's is no reservation."""
        r = self.reservations.get(rid)
        return r if r is not None and r.storefront == storefront else None

    def confirm(self, rid: str, ref: str, storefront: str) -> Ok | Refused:
        r = self.mine(rid, storefront)
        if r is None:
            return self._refuse("NOT_FOUND", counted=False, what="reservation")
        if r.state == CONFIRMED:
            if r.ref == ref:
                return self._ok(r, replayed=True)
            return self._refuse("INVALID_STATE", counted=False, state=CONFIRMED)
        if r.state != HELD:
            return self._refuse("INVALID_STATE", counted=False, state=r.state)
        if r.overdue:
            self._release(r, EXPIRED)
            return self._refuse("INVALID_STATE", counted=False, state=EXPIRED)
        r.state, r.ref = CONFIRMED, ref
        self._event(CONFIRMED, r)
        return self._ok(r, replayed=False)

    def cancel(self, rid: str, storefront: str) -> Ok | Refused:
        r = self.mine(rid, storefront)
        if r is None:
            return self._refuse("NOT_FOUND", counted=False, what="reservation")
        if r.state == CANCELLED:
            return self._ok(r, replayed=True)
        if r.state != HELD:
            return self._refuse("INVALID_STATE", counted=False, state=r.state)
        if r.overdue:
            self._release(r, EXPIRED)
            return self._refuse("INVALID_STATE", counted=False, state=EXPIRED)
        self._release(r, CANCELLED)
        return self._ok(r, replayed=False)

    def make_overdue(self, rid: str) -> None:
        self.reservations[rid].overdue = True

    def expire_due(self) -> int:
        due = [r for r in self.reservations.values() if r.state == HELD and r.overdue]
        for r in due:
            self._release(r, EXPIRED)
        return len(due)
