"""What a simulated buyer does: the behaviour mix, and the deliberately bad requests.

A buyer reserves 1..cap units of one product (weighted by stock), then confirms (most), cancels
(some) or walks away and lets the hold expire (some). A few buyers also replay their reservation
(same Idempotency-Key: must return the same reservation), reuse the key with another body (must be
refused), or ask for more than their cap allows (must be refused). A small share send malformed
requests, each of which must get its documented 4xx and change nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Mix:
    confirm: float = 0.85  # of buyers granted a hold: pay
    cancel: float = 0.075  # release the hold; the rest abandon it (it expires)
    replay: float = 0.02  # resend the same reserve with the same Idempotency-Key
    key_reuse: float = 0.01  # same Idempotency-Key, different body: 409 IDEMPOTENCY_KEY_REUSED
    cap_probe: float = 0.02  # then ask for more than the cap allows: 409 USER_CAP_EXCEEDED
    token_probe: float = 0.02  # queue mode: first reserve without the token, or with another's: 403
    bad: float = 0.005  # of buyers: one deliberately bad request instead of a purchase
    max_cap_share: float = 0.3  # of buyers asking for their whole cap at once

    def fate(self, rng: random.Random) -> str:
        r = rng.random()
        if r < self.confirm:
            return "confirm"
        if r < self.confirm + self.cancel:
            return "cancel"
        return "abandon"

    def units(self, rng: random.Random, cap: int) -> int:
        if rng.random() < self.max_cap_share:
            return cap
        return rng.randint(1, cap)


@dataclass(frozen=True, slots=True)
class BadRequest:
    """One malformed request and the statuses docs/API.md allows for it."""

    name: str
    method: bytes
    path: str  # relative to the campaign: "/reservations", or absolute when it starts with "//"
    body: bytes | None
    key: bool  # send an Idempotency-Key header
    auth: str  # "ok" | "none" | "wrong"
    allowed: frozenset[int]


_INVALID = frozenset({400, 422})


def bad_requests(user_id: str, product_id: str) -> list[BadRequest]:
    """The catalogue of bad input, each aimed at ``user_id`` (who must end up holding nothing)."""

    def body(**fields: object) -> bytes:
        return orjson.dumps(fields)

    ok = {"user_id": user_id, "product_id": product_id}
    res = "/reservations"
    return [
        BadRequest("units zero", b"POST", res, body(**ok, units=0), True, "ok", _INVALID),
        BadRequest("units negative", b"POST", res, body(**ok, units=-3), True, "ok", _INVALID),
        BadRequest("units a string", b"POST", res, body(**ok, units="3"), True, "ok", _INVALID),
        BadRequest("units a float", b"POST", res, body(**ok, units=2.5), True, "ok", _INVALID),
        BadRequest("units a boolean", b"POST", res, body(**ok, units=True), True, "ok", _INVALID),
        BadRequest("units huge", b"POST", res, body(**ok, units=0)[:-2] + b"1" + b"0" * 30 + b"}", True, "ok",
                   _INVALID | {409}),
        BadRequest("unknown field", b"POST", res, body(**ok, units=1, coupon="FREE"), True, "ok", _INVALID),
        BadRequest("user missing", b"POST", res, body(product_id=product_id, units=1), True, "ok", _INVALID),
        BadRequest("user id malformed", b"POST", res,
                   body(user_id=user_id + "|x", product_id=product_id, units=1), True, "ok", _INVALID),
        BadRequest("not JSON", b"POST", res, b"units=1&user=" + user_id.encode(), True, "ok", _INVALID),
        BadRequest("JSON not an object", b"POST", res, b"[1, 2, 3]", True, "ok", _INVALID),
        BadRequest("no Idempotency-Key", b"POST", res, body(**ok, units=1), False, "ok", _INVALID),
        BadRequest("body over 4 KiB", b"POST", res, body(**ok, units=1, note="x" * 5000), True, "ok",
                   frozenset({413})),
        BadRequest("unknown product", b"POST", res,
                   body(user_id=user_id, product_id="no-such-product", units=1), True, "ok",
                   # 404; or 422 where the campaign caps buyers, since this probe carries no buyer signal
                   frozenset({404}) | _INVALID),
        BadRequest("no token", b"POST", res, body(**ok, units=1), True, "none", frozenset({401})),
        BadRequest("wrong token", b"POST", res, body(**ok, units=1), True, "wrong", frozenset({401, 403})),
        BadRequest("unknown campaign", b"POST", "//v1/campaigns/no-such-campaign/reservations",
                   body(**ok, units=1), True, "ok", frozenset({404})),
        BadRequest("confirm unknown reservation", b"POST", "/reservations/nosuchreservation/confirm",
                   body(payment_ref="pay-x"), False, "ok", frozenset({404})),
    ]
