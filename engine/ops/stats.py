"""Sell-through stats (stub: filled in by the ops work)."""

from __future__ import annotations

from typing import Any

from engine.core import Engine


async def campaign_stats(engine: Engine, campaign_id: str) -> dict[str, Any]:
    """The ``GET /v1/campaigns/{cid}/stats`` body of API.md, from the scripts' counters."""
    c = await engine.counters(campaign_id)
    total = c.view.campaign.total_units
    return {"campaign_id": campaign_id, "state": c.view.state, "total_units": total,
            "sold_units": c.sold, "held_units": c.held, "remaining_units": total - c.sold - c.held}
