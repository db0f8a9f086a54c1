"""Typed values the engine returns: reservations, holdings, campaign views and counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import keys
from engine.campaign import Campaign, ms_to_rfc3339

STATES = keys.STATES


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    campaign_id: str
    product_id: str
    user_id: str
    units: int
    amount: int
    state: str
    expires_at_ms: int
    created_at_ms: int
    storefront: str
    payment_ref: str | None = None
    confirmed_at_ms: int | None = None

    @classmethod
    def unpack(cls, campaign_id: str, reservation_id: str, packed: bytes) -> Reservation:
        """From the record the scripts keep (``engine.keys.unpack_record``; the buyer signals a
        record may carry are not shown here)."""
        r = keys.unpack_record(packed)
        return cls(reservation_id, campaign_id, r.product, r.user, r.units, r.amount, r.state, r.expires_ms,
                   r.created_ms, r.storefront, r.ref or None, r.confirmed_ms or None)

    def seen_at(self, now_ms: int) -> Reservation:
        """As a reader at ``now_ms`` sees it: a hold past its deadline is expired, sweeper or not."""
        if self.state == "held" and now_ms >= self.expires_at_ms:
            return Reservation(self.reservation_id, self.campaign_id, self.product_id, self.user_id,
                               self.units, self.amount, "expired", self.expires_at_ms,
                               self.created_at_ms, self.storefront)
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reservation_id": self.reservation_id, "campaign_id": self.campaign_id,
            "product_id": self.product_id, "user_id": self.user_id, "units": self.units,
            "amount": self.amount, "state": self.state, "expires_at": ms_to_rfc3339(self.expires_at_ms),
        }
        if self.state == "confirmed":
            out["payment_ref"] = self.payment_ref
            out["confirmed_at"] = ms_to_rfc3339(self.confirmed_at_ms or 0)
        return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """A reservation and whether this call replayed an earlier one (HTTP 200) or made it (201)."""

    reservation: Reservation
    replayed: bool


@dataclass(frozen=True, slots=True)
class ProductHolding:
    product_id: str
    held_units: int
    confirmed_units: int


@dataclass(frozen=True, slots=True)
class Holdings:
    campaign_id: str
    user_id: str
    held_units: int
    confirmed_units: int
    products: tuple[ProductHolding, ...]

    @staticmethod
    def fields(c: Campaign, user_id: str, storefront: str) -> list[str]:
        """The users-hash fields that hold one storefront's units of the user, per product
        (``engine.keys.Users``), in ``from_values`` order."""
        out: list[str] = []
        for p in c.products:
            out += [keys.Users.taken(user_id, p.id, storefront), keys.Users.confirmed(user_id, p.id, storefront)]
        return out

    @classmethod
    def from_values(cls, c: Campaign, user_id: str, raw: Sequence[bytes | None]) -> Holdings:
        v = [int(x or 0) for x in raw]  # t| counts held + confirmed units, c| confirmed alone
        products = tuple(ProductHolding(p.id, v[2 * i] - v[2 * i + 1], v[2 * i + 1])
                         for i, p in enumerate(c.products))
        return cls(c.id, user_id, sum(p.held_units for p in products),
                   sum(p.confirmed_units for p in products), products)

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id, "user_id": self.user_id,
            "held_units": self.held_units, "confirmed_units": self.confirmed_units,
            "products": [{"product_id": p.product_id, "held_units": p.held_units,
                          "confirmed_units": p.confirmed_units} for p in self.products],
        }


def campaign_state(flag: str, opens_ms: int, closes_ms: int, now_ms: int) -> str:
    """The public state, by the same rule as ``reserve.lua`` (``flag``: meta's, ``keys.Flag``)."""
    if flag == keys.Flag.CLOSED or now_ms >= closes_ms:
        return "closed"
    if now_ms < opens_ms:
        return "scheduled"
    if flag in (keys.Flag.PAUSED, keys.Flag.RECOVERING):
        return "paused"
    return "open"


@dataclass(frozen=True, slots=True)
class CampaignView:
    campaign: Campaign
    flag: str
    now_ms: int

    @property
    def state(self) -> str:
        c = self.campaign
        return campaign_state(self.flag, c.opens_at_ms, c.closes_at_ms, self.now_ms)

    def to_dict(self) -> dict[str, Any]:
        return {**self.campaign.to_dict(), "state": self.state}


@dataclass(frozen=True, slots=True)
class Counters:
    """What the scripts count for one campaign, read in one round trip (ops build stats from it)."""

    view: CampaignView
    sold: int
    held: int
    orders: int
    buyers: int
    product_sold: dict[str, int]
    product_held: dict[str, int]
    rejections: dict[str, int]
    taken_last_minute: int  # units taken out of the tranche over the last 60 s
    persisted_orders: int
    extra: dict[str, int] = field(default_factory=dict)
    damaged: int = 0  # records the scripts set aside because they could not read them
