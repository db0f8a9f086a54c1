"""Sell-through stats: the ``GET /v1/campaigns/{cid}/stats`` body of docs/API.md.

Built from one ``Engine.counters`` read (the counters the scripts keep, one round trip), never
from a key scan, so a stats poll costs the same at 10 or 10 million reservations.

- ``units_per_second_1m``: units taken out of the tranche (reserved) over the last 60 whole
  seconds, divided by 60: the rate the tranche drains at.
- ``projected_sellout_at``: now + remaining / that rate; ``null`` when nothing was taken in the
  last minute, or the campaign is closed (it will not sell out any more).
- ``products[].remaining_units``: what a user can still reserve of that product now, the
  smaller of the product's own remainder and the tranche's (the same figure ``reserve.lua``
  judges by and ``INSUFFICIENT_STOCK`` reports in ``details.remaining``).
- ``rejections``: every reserve rejection code, zero when it never happened, so a chart or an
  alert sees a stable set of keys.
- ``ledger.lag_orders``: confirmed orders not yet in the durable ledger (orders − persisted).
- ``damaged_records``: reservation records the scripts could not read and set aside (each one
  is logged once); anything but 0 needs an operator.
- ``queue`` (queue-mode campaigns only): tickets ``waiting`` and ``admitted``, the
  ``admit_per_second`` in force, the seed's ``seed_sha256`` (``engine.admission``).
"""

from __future__ import annotations

from typing import Any

from engine.admission.service import queue_stats
from engine.campaign import ms_to_rfc3339
from engine.core import Counters, Engine

RATE_WINDOW_S = 60  # units_per_second_1m averages over this many whole seconds
#: The codes ``reserve.lua`` counts, in the order dashboards show them.
REJECTION_CODES = ("SOLD_OUT", "INSUFFICIENT_STOCK", "USER_CAP_EXCEEDED", "RATE_LIMITED", "PAUSED",
                   "NOT_OPEN", "CLOSED", "IDEMPOTENCY_KEY_REUSED")


async def campaign_stats(engine: Engine, campaign_id: str) -> dict[str, Any]:
    """The stats body of one campaign; raises ``NotFound`` or ``StorageUnavailable``."""
    counters = await engine.counters(campaign_id)
    body = stats_from_counters(counters)
    if counters.view.campaign.queued:
        body["queue"] = await queue_stats(engine, counters.view.campaign, counters.view.now_ms)
    return body


def remaining_units(c: Counters) -> int:
    """Units of the tranche neither sold nor held."""
    return max(c.view.campaign.total_units - c.sold - c.held, 0)


def projected_sellout_ms(c: Counters) -> int | None:
    """When the tranche runs out at the last minute's rate (ms since the epoch), or None."""
    if c.taken_last_minute <= 0 or c.view.state == "closed":
        return None
    return c.view.now_ms + remaining_units(c) * RATE_WINDOW_S * 1000 // c.taken_last_minute


def stats_from_counters(c: Counters) -> dict[str, Any]:
    """The docs/API.md stats body from a ``Counters`` read (pure: no I/O)."""
    campaign = c.view.campaign
    total = campaign.total_units
    remaining = remaining_units(c)
    sellout = projected_sellout_ms(c)
    rejections = dict.fromkeys(REJECTION_CODES, 0)
    rejections.update(c.rejections)
    return {
        "campaign_id": campaign.id,
        "state": c.view.state,
        "as_of": ms_to_rfc3339(c.view.now_ms),
        "total_units": total,
        "sold_units": c.sold,
        "held_units": c.held,
        "remaining_units": remaining,
        "sell_through": round(c.sold / total, 4) if total else 0.0,
        "buyers": c.buyers,
        "units_per_second_1m": round(c.taken_last_minute / RATE_WINDOW_S, 2),
        "projected_sellout_at": None if sellout is None else ms_to_rfc3339(sellout),
        "rejections": rejections,
        "ledger": {"persisted_orders": c.persisted_orders,
                   "lag_orders": max(c.orders - c.persisted_orders, 0)},
        "products": [
            {"product_id": p.id, "total_units": p.total_units,
             "sold_units": c.product_sold.get(p.id, 0), "held_units": c.product_held.get(p.id, 0),
             "remaining_units": min(max(p.total_units - c.product_sold.get(p.id, 0)
                                        - c.product_held.get(p.id, 0), 0), remaining)}
            for p in campaign.products
        ],
        "damaged_records": c.damaged,
    }
