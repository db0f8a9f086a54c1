"""The reservation core: the Engine over the Lua scripts, the batcher and the expiry sweeper."""

from __future__ import annotations

from engine.core.engine import Engine, ReserveRequest
from engine.core.results import CampaignView, Counters, Holdings, Outcome, Reservation

__all__ = ["CampaignView", "Counters", "Engine", "Holdings", "Outcome", "Reservation", "ReserveRequest"]
