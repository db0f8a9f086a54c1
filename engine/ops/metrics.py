"""Prometheus metrics (stub: filled in by the ops work; the API calls these hooks)."""

from __future__ import annotations


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP request served: route template (``/v1/campaigns/{cid}/reservations``), status, latency."""


def count_outcome(operation: str, code: str) -> None:
    """One engine outcome: operation ``reserve``/``confirm``/``cancel``/``expire``, code ``OK`` or a rejection code."""
