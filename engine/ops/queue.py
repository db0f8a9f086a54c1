"""The waiting rooms' figures for ``/metrics``, read from Redis at scrape time like the rest of
``engine.ops.collector``: tickets waiting and admitted, and the admission rate in force, per
queue-mode campaign. Admission paused while stock remains shows as a rate of 0 beside
``flashsale_campaign_remaining_units`` above 0 (the alert rule's inputs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from engine.admission.service import queue_stats
from engine.core import Engine
from engine.errors import FlashsaleError


async def queue_snapshot(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    """(campaign id, queue block) for every queue-mode campaign; empty when Redis did not answer."""
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        for cid in await engine.campaign_ids():
            view = await engine.view(cid)
            if view.campaign.queued:
                out.append((cid, await queue_stats(engine, view.campaign, view.now_ms)))
    except FlashsaleError:
        return []
    return out


class QueueCollector:
    def __init__(self, snap: list[tuple[str, dict[str, Any]]]) -> None:
        self.snap = snap

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if not self.snap:
            return
        families = {
            "waiting": GaugeMetricFamily("flashsale_queue_waiting_tickets", "Tickets not admitted yet",
                                         labels=["campaign"]),
            "admitted": GaugeMetricFamily("flashsale_queue_admitted_tickets", "Tickets admitted so far",
                                          labels=["campaign"]),
            "admit_per_second": GaugeMetricFamily("flashsale_queue_admit_per_second",
                                                  "Admission rate in force (0: paused)", labels=["campaign"]),
        }
        for cid, block in self.snap:
            for name, family in families.items():
                family.add_metric([cid], float(block[name]))
        yield from families.values()
