"""Response bodies as bytes, built for the hot path.

A reservation's JSON is the shape of ``Reservation.to_dict`` (docs/API.md), with its times formatted
through a small per-second cache: ``datetime`` formatting would cost more than the rest of the
body (``tests/api/test_app.py`` checks the two agree).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from engine.core import Reservation

_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 4096  # distinct seconds cached before the cache starts over


def rfc3339_ms(ms: int) -> str:
    """An instant in ms as RFC 3339 UTC with milliseconds (as ``engine.campaign.ms_to_rfc3339``)."""
    sec, milli = divmod(ms, 1000)
    prefix = _SECONDS.get(sec)
    if prefix is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        prefix = _SECONDS[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{prefix}.{milli:03d}Z"


def reservation(r: Reservation) -> bytes:
    out: dict[str, Any] = {
        "reservation_id": r.reservation_id, "campaign_id": r.campaign_id, "product_id": r.product_id,
        "user_id": r.user_id, "units": r.units, "amount": r.amount, "state": r.state,
        "expires_at": rfc3339_ms(r.expires_at_ms),
    }
    if r.state == "confirmed":
        out["payment_ref"] = r.payment_ref
        out["confirmed_at"] = rfc3339_ms(r.confirmed_at_ms or 0)
    return orjson.dumps(out)


def json(value: Any) -> bytes:
    return orjson.dumps(value)
