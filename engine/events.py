"""The events each script appends to a campaign's stream ``fs:{c:ID}:events``.

One stream entry is one transition. Its fields (all strings, as Redis stores them; their names:
``engine.keys.EventField``):

| field | in | what |
|---|---|---|
| ``e`` | all | ``reserved`` · ``confirmed`` · ``cancelled`` · ``expired`` |
| ``rid`` | all | reservation id |
| ``pid`` / ``uid`` | all | product and user id |
| ``units`` / ``amount`` | all | whole units; amount in minor currency units (units × unit_price) |
| ``at`` | all | Redis ``TIME`` of the transition, ms since the epoch |
| ``sf`` | reserved | the storefront that made it |
| ``exp`` | reserved | the hold's deadline, ms since the epoch |
| ``key`` | reserved | the Idempotency-Key it was made with (absent from entries written before it was added) |
| ``ref`` | confirmed | the payment reference |
| ``bi`` / ``bd`` / ``bn`` | reserved | under buyer caps: the identity, device, network the caps counted |

``bi``, ``bd`` and ``bn`` are present only when the campaign has a buyer cap; each is ``''`` for a
dimension it does not cap (the network is the IPv4 /24 or IPv6 /48 of the buyer's ip).

The campaign id is the stream's (``engine.keys.campaign_of_stream``). The writer turns each
``confirmed`` event into one ``orders`` row and every event into one history row keyed by the
stream entry id, so a redelivered entry is written once. ``flashsale recover`` rebuilds the
idempotency hash (``<sf>|<key>`` -> ``rid``) from the ``reserved`` events, and the buyers hash
(``engine.ledger.history.totals``) from their buyer signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine import keys
from engine.keys import EventField as F

EventType = Literal["reserved", "confirmed", "cancelled", "expired"]  # keys.EVENT_TYPES
EVENT_TYPES: frozenset[str] = frozenset(keys.EVENT_TYPES)


class MalformedEvent(ValueError):
    """A stream entry that is not a flashsale event (it goes to the dead-letter stream)."""


@dataclass(frozen=True, slots=True)
class Event:
    campaign_id: str
    entry_id: str  # the stream entry id, e.g. "1700000000000-0"
    type: EventType
    reservation_id: str
    product_id: str
    user_id: str
    units: int
    amount: int
    at_ms: int
    storefront: str | None = None
    expires_at_ms: int | None = None
    payment_ref: str | None = None
    idempotency_key: str | None = None
    identity: str | None = None  # the buyer signals a cap counted (reserved, under buyer caps)
    device: str | None = None
    network: str | None = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode(campaign_id: str, entry_id: bytes | str, fields: dict[bytes, bytes] | dict[str, str]) -> Event:
    """Decode one stream entry; raises ``MalformedEvent`` naming what is wrong (bytes that are not
    UTF-8 included)."""
    try:
        f = {_text(k): _text(v) for k, v in fields.items()}
        eid = _text(entry_id)
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"not UTF-8: {exc}") from exc
    kind = f.get(F.TYPE)
    if kind not in EVENT_TYPES:
        raise MalformedEvent(f"unknown event type {kind!r}")
    try:
        exp = f.get(F.EXP)
        return Event(
            campaign_id=campaign_id,
            entry_id=eid,
            type=kind,  # type: ignore[arg-type]
            reservation_id=f[F.RID],
            product_id=f[F.PID],
            user_id=f[F.UID],
            units=int(f[F.UNITS]),
            amount=int(f[F.AMOUNT]),
            at_ms=int(f[F.AT]),
            storefront=f.get(F.SF),
            expires_at_ms=int(exp) if exp is not None else None,
            payment_ref=f.get(F.REF),
            idempotency_key=f.get(F.KEY),
            identity=f.get(F.IDENTITY),
            device=f.get(F.DEVICE),
            network=f.get(F.NETWORK),
        )
    except (KeyError, ValueError) as exc:
        raise MalformedEvent(f"bad {kind} event: {exc!r}") from exc
