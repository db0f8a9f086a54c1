"""Gauges and counters read from Redis at scrape time: what is sold, held and left, the ledger's lag.

These figures live in Redis, shared by every API worker, so they are read when Prometheus
scrapes rather than kept in each process: whichever worker answers reports the same numbers,
and nothing is counted twice. ``snapshot()`` does the (async) reading; ``SnapshotCollector``
turns a snapshot into metric families for ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.core import Engine
from engine.errors import StorageUnavailable
from engine.ops.overview import CampaignOverview, Overview, overview
from engine.ops.stats import RATE_WINDOW_S, projected_sellout_ms, stats_from_counters

STATES = ("scheduled", "open", "paused", "closed")
_C = ("campaign",)
_P = ("campaign", "product")


async def snapshot(engine: Engine) -> Overview | None:
    """Everything the collector reports, or None when Redis did not answer."""
    try:
        return await overview(engine)
    except StorageUnavailable:
        return None


def _gauge(name: str, doc: str, labels: tuple[str, ...] = _C) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: tuple[str, ...] = _C) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _families() -> dict[str, Any]:
    return {
        "capacity": _gauge("flashsale_campaign_capacity_units", "Units in the tranche"),
        "sold": _counter("flashsale_campaign_sold_units", "Units in confirmed orders"),
        "held": _gauge("flashsale_campaign_held_units", "Units in unpaid holds"),
        "remaining": _gauge("flashsale_campaign_remaining_units", "Units still available"),
        "ratio": _gauge("flashsale_campaign_sell_through_ratio", "Sold units over the tranche, 0..1"),
        "orders": _counter("flashsale_campaign_orders", "Confirmed orders"),
        "buyers": _gauge("flashsale_campaign_buyers", "Users with at least one confirmed order"),
        "rate": _gauge("flashsale_campaign_take_rate_units_per_second",
                       "Units reserved per second, averaged over the last minute"),
        "sellout": _gauge("flashsale_campaign_projected_sellout_timestamp_seconds",
                          "When the tranche runs out at the last minute's rate (absent without a rate)"),
        "state": _gauge("flashsale_campaign_state", "1 for the campaign's current state", ("campaign", "state")),
        "rejections": _counter("flashsale_campaign_rejections", "Reserve attempts refused, by public code",
                               ("campaign", "code")),
        "p_capacity": _gauge("flashsale_product_capacity_units", "Units allotted to the product", _P),
        "p_sold": _counter("flashsale_product_sold_units", "Units of the product in confirmed orders", _P),
        "p_held": _gauge("flashsale_product_held_units", "Units of the product in unpaid holds", _P),
        "p_remaining": _gauge("flashsale_product_remaining_units", "Units of the product still available", _P),
        "persisted": _counter("flashsale_ledger_persisted_orders", "Orders the writer has made durable"),
        "lag": _gauge("flashsale_ledger_lag_orders", "Confirmed orders not yet in the durable ledger"),
        "c_dead": _gauge("flashsale_ledger_dead_letters", "The campaign's stream entries the writer gave up on"),
        "length": _gauge("flashsale_writer_stream_entries", "Entries in the campaign's events stream"),
        "undelivered": _gauge("flashsale_writer_undelivered_entries", "Stream entries no writer has read yet"),
        "pending": _gauge("flashsale_writer_pending_entries", "Stream entries read but not acknowledged yet"),
    }


def _add_campaign(f: dict[str, Any], co: CampaignOverview) -> None:
    c, ledger = co.counters, co.ledger
    s = stats_from_counters(c)
    cid = s["campaign_id"]
    for key, field in (("capacity", "total_units"), ("sold", "sold_units"), ("held", "held_units"),
                       ("remaining", "remaining_units"), ("buyers", "buyers")):
        f[key].add_metric([cid], float(s[field]))
    f["ratio"].add_metric([cid], c.sold / s["total_units"] if s["total_units"] else 0.0)
    f["rate"].add_metric([cid], c.taken_last_minute / RATE_WINDOW_S)
    f["orders"].add_metric([cid], float(c.orders))
    sellout = projected_sellout_ms(c)
    if sellout is not None:
        f["sellout"].add_metric([cid], sellout / 1000)
    for state in STATES:
        f["state"].add_metric([cid, state], 1.0 if s["state"] == state else 0.0)
    for code, n in s["rejections"].items():
        f["rejections"].add_metric([cid, code], float(n))
    for p in s["products"]:
        pid = p["product_id"]
        f["p_capacity"].add_metric([cid, pid], float(p["total_units"]))
        f["p_sold"].add_metric([cid, pid], float(p["sold_units"]))
        f["p_held"].add_metric([cid, pid], float(p["held_units"]))
        f["p_remaining"].add_metric([cid, pid], float(p["remaining_units"]))
    f["persisted"].add_metric([cid], float(s["ledger"]["persisted_orders"]))
    f["lag"].add_metric([cid], float(s["ledger"]["lag_orders"]))
    f["c_dead"].add_metric([cid], float(ledger.dead_letters))
    f["length"].add_metric([cid], float(ledger.stream_length))
    if ledger.undelivered is not None:  # Redis cannot always tell (after deletions)
        f["undelivered"].add_metric([cid], float(ledger.undelivered))
    f["pending"].add_metric([cid], float(ledger.pending))


class SnapshotCollector:
    """A one-shot collector over a snapshot (registered in a per-scrape registry)."""

    def __init__(self, snap: Overview | None) -> None:
        self.snap = snap

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = _gauge("flashsale_redis_up", "1 when Redis answered this scrape, else 0", ())
        up.add_metric([], 0.0 if self.snap is None else 1.0)
        yield up
        if self.snap is None:
            return
        f = _families()
        for co in self.snap.campaigns:
            _add_campaign(f, co)
        yield from f.values()
        dead = _gauge("flashsale_writer_dead_letters", "Entries in the dead-letter stream (fs:dead)", ())
        dead.add_metric([], float(self.snap.dead_letters))
        yield dead
        alive = _gauge("flashsale_writers_alive", "Ledger writers alive (liveness key not expired)", ())
        alive.add_metric([], float(self.snap.writers_alive))
        yield alive
