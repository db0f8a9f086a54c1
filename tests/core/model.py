"""A pure-Python reference model of one campaign in the reservation core, as docs/API.md describes it.

No Redis, no batching, no clock: a hold is "overdue" only when a test says so (it rewrites the
real hold's deadline to the past). Each operation returns what the engine must answer: ``Ok``
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


class Model:
    def __init__(self, *, total: int, cap: int | None, products: dict[str, ProductDef], price: int) -> None:
        self.total = total
        self.cap = cap
        self.products = products
        self.price = price
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

    # -- operations ----------------------------------------------------------------------

    def _refuse(self, code: str, counted: bool = True, **details: object) -> Refused:
        if counted:
            self.rejections[code] += 1
        return Refused(code, details)

    def _ok(self, r: Res, replayed: bool, new: bool = False) -> Ok:
        return Ok(None if new else r.rid, replayed, r.visible_state, r.product, r.user, r.units, r.amount,
                  r.ref if r.state == CONFIRMED else None)

    def reserve(self, storefront: str, key: str, user: str, product: str, units: int) -> Ok | Refused:
        """The decision; on a new reservation call ``add`` with the engine's id."""
        prior = self.idem.get((storefront, key))
        if prior is not None:
            r = self.reservations[prior]
            if (r.product, r.user, r.units) != (product, user, units):
                return self._refuse("IDEMPOTENCY_KEY_REUSED")
            return self._ok(r, replayed=True)
        p = self.products.get(product)
        if p is None:
            return self._refuse("NOT_FOUND", counted=False, what="product")
        if self.paused:
            return self._refuse("PAUSED")
        allowed: int | None = None
        if p.cap is not None:
            allowed = p.cap - self.taken(user, product)
        if self.cap is not None:
            a = self.cap - self.taken(user)
            allowed = a if allowed is None else min(allowed, a)
        if allowed is not None and units > allowed:
            return self._refuse("USER_CAP_EXCEEDED", allowed=max(allowed, 0))
        used_p = self.units(state=HELD, product=product) + self.units(state=CONFIRMED, product=product)
        used = self.units(state=HELD) + self.units(state=CONFIRMED)
        remaining = min(p.total - used_p, self.total - used)
        if remaining <= 0:
            return self._refuse("SOLD_OUT")
        if units > remaining:
            return self._refuse("INSUFFICIENT_STOCK", remaining=remaining)
        return Ok(None, False, HELD, product, user, units, units * self.price)

    def add(self, rid: str, storefront: str, key: str, user: str, product: str, units: int) -> None:
        r = Res(rid, storefront, key, product, user, units, units * self.price)
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
