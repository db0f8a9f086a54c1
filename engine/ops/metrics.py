"""Prometheus metrics: what each process counts, and ``render()`` for ``GET /metrics``.

Two kinds of figures:

- **Counted in the process** (the API calls the hooks): requests and their latency
  (``observe_request``), engine outcomes by code and engine call latency (``count_outcome``),
  and, once ``engine.ops.instrument.instrument`` has wrapped an Engine, the round trip and
  batch size of each script call and the holds the sweeper expires; the sweeper's ticks
  (``observe_sweep``: the last good tick's time, failures). With several workers, ``flashsale serve`` calls
  ``prepare_multiprocess()`` before it starts them: each worker then writes its values to files
  in ``PROMETHEUS_MULTIPROC_DIR`` (``engine.ops.mpvalues``) and a scrape of any worker sums them all.
- **Read from Redis at scrape time** (``engine.ops.collector``): units sold / held / remaining,
  rejections, the ledger's lag, the writer's stream backlog and dead letters. They live in
  Redis, so every worker reports the same values and nothing is counted twice.

The metric objects are built on first use in each process, never at import: a worker forked or
spawned after ``prepare_multiprocess()`` must build them with the multiprocess value class.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from engine import fastpath
from engine.core import Engine
from engine.core.sweeper import SweepTick
from engine.ops.collector import SnapshotCollector, snapshot
from engine.ops.queue import QueueCollector, queue_snapshot
from engine.ops.series import CounterFamily, Families, GaugeFamily, HistogramFamily

log = logging.getLogger("flashsale.ops")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus 2.x parses
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCRIPT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


@dataclass(frozen=True, slots=True)
class _Metrics:
    registry: CollectorRegistry
    requests: CounterFamily
    request_seconds: HistogramFamily
    outcomes: CounterFamily
    engine_seconds: HistogramFamily
    script_seconds: HistogramFamily
    script_batch: HistogramFamily
    sweeper_last_success: GaugeFamily
    sweeper_errors: CounterFamily
    queue: CounterFamily
    # the series each hook writes, by the hook's own key (route templates, codes: a few dozen)
    series: dict[tuple[Any, ...], Any] = field(default_factory=dict)


def _build() -> _Metrics:
    # with several workers each writes its own file, which any worker's scrape sums; chosen here, at
    # first use in each process: a worker spawned after prepare_multiprocess() finds the variable set
    value = _multiprocess_value() if os.environ.get(MULTIPROC_ENV) else values.MutexValue  # type: ignore[attr-defined]
    families = (
        CounterFamily("flashsale_http_requests", "HTTP requests served, by route template and status",
                      ["route", "method", "status"], value),
        HistogramFamily("flashsale_http_request_duration_seconds", "HTTP request latency",
                        ["route", "method"], REQUEST_BUCKETS, value),
        CounterFamily("flashsale_outcomes", "Engine outcomes: operation and OK or the rejection code",
                      ["operation", "code"], value),
        HistogramFamily("flashsale_engine_call_duration_seconds",
                        "Engine call latency as the API sees it (batching wait included)",
                        ["operation"], REQUEST_BUCKETS, value),
        HistogramFamily("flashsale_script_duration_seconds", "Lua script round trip (EVALSHA)",
                        ["script"], SCRIPT_BUCKETS, value),
        HistogramFamily("flashsale_script_batch_requests", "Requests carried by one script call",
                        ["script"], BATCH_BUCKETS, value),
        # the latest of every worker's (mode max): any worker's sweep releases every campaign's holds
        GaugeFamily("flashsale_sweeper_last_success_timestamp_seconds",
                    "Unix time of the expiry sweeper's last tick in which every campaign was swept",
                    [], value, mode="max"),
        CounterFamily("flashsale_sweeper_errors", "Sweeper failures: a campaign's sweep, or a whole tick",
                      [], value),
        CounterFamily("flashsale_queue_requests", "Waiting-room calls: join (OK or the code), poll (the "
                      "state answered), registration", ["call", "outcome"], value),
    )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Families(*families))  # type: ignore[arg-type]
    return _Metrics(registry, *families)  # type: ignore[arg-type]


def _multiprocess_value() -> Any:
    """Our lean values on a prometheus-client release they were tested with, else its own
    (``engine.fastpath``): the same files either way, so a scrape sums them alike."""
    if fastpath.metric_values().on:
        from engine.ops.mpvalues import MmapValue

        return MmapValue
    return values.MultiProcessValue()  # type: ignore[no-untyped-call]


_state: dict[str, _Metrics] = {}


def _metrics() -> _Metrics:
    m = _state.get("m")
    if m is None:
        m = _state["m"] = _build()
    return m


# -- hooks the API and the engine wrapper call --------------------------------------------------

def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP request served: route template (``/v1/campaigns/{cid}/reservations``), status, latency."""
    m = _metrics()
    key = ("request", route, method, status)
    pair = m.series.get(key)
    if pair is None:
        pair = m.series[key] = (m.requests.child(route, method, str(status)), m.request_seconds.child(route, method))
    pair[0].inc(1)
    pair[1].observe(seconds)


def count_outcome(operation: str, code: str, seconds: float | None = None) -> None:
    """One engine outcome: operation ``reserve``/``confirm``/``cancel``/``expire``, code ``OK`` or a
    rejection code; ``seconds``, when given, is how long the engine call took (batching included)."""
    m = _metrics()
    series = m.series
    key = ("outcome", operation, code)
    counter = series.get(key)
    if counter is None:
        counter = series[key] = m.outcomes.child(operation, code)
    counter.inc(1)
    if seconds is not None:
        timer_key = ("engine", operation)
        timer = series.get(timer_key)
        if timer is None:  # made on first use only: an operation never timed shows no series
            timer = series[timer_key] = m.engine_seconds.child(operation)
        timer.observe(seconds)


def observe_script(script: str, requests: int, seconds: float) -> None:
    """One script call (EVALSHA round trip) carrying ``requests`` requests (a batch, or 1)."""
    m = _metrics()
    key = ("script", script)
    pair = m.series.get(key)
    if pair is None:
        pair = m.series[key] = (m.script_seconds.child(script), m.script_batch.child(script))
    pair[0].observe(seconds)
    pair[1].observe(requests)


def count_queue(call: str, outcome: str) -> None:
    """One waiting-room call: ``join`` / ``registration`` with ``OK`` or the error code, ``poll``
    with the state it answered (``waiting``, ``admitted``, ``sold_out``, ``expired``) or the code."""
    m = _metrics()
    key = ("queue", call, outcome)
    counter = m.series.get(key)
    if counter is None:
        counter = m.series[key] = m.queue.child(call, outcome)
    counter.inc(1)


def count_expired(holds: int) -> None:
    """Holds the sweeper released at their deadline (outcome ``expire``/``OK``)."""
    if holds > 0:
        _metrics().outcomes.child("expire", "OK").inc(holds)


def observe_sweep(tick: SweepTick) -> None:
    """One sweeper tick (``Sweeper(on_tick=...)``): a good one moves the last-success time."""
    m = _metrics()
    if tick.good:
        m.sweeper_last_success.child().set(tick.at_s)
    failures = tick.failed + (0 if tick.completed else 1)
    m.sweeper_errors.child().inc(failures)  # 0 too: the series exists from the first tick


# -- several workers ------------------------------------------------------------------------------

def prepare_multiprocess() -> str:
    """Switch prometheus-client to multiprocess mode before workers start; returns the directory.

    Uses ``$PROMETHEUS_MULTIPROC_DIR`` when set (emptied first: files left by an earlier run
    would be summed in), else a fresh temporary directory, removed when this process exits.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()
    else:
        path = tempfile.mkdtemp(prefix="flashsale-metrics-")
        os.environ[MULTIPROC_ENV] = path
        atexit.register(_remove_dir, path, os.getpid())
    _state.clear()
    return path


def _remove_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:  # forked workers inherit atexit handlers: only the parent removes it
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_dir() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


class _Workers:
    """``MultiProcessCollector`` over the files that read whole: a worker SIGKILLed while it
    created its file leaves one torn (empty, or a header cut short), which would fail the
    whole scrape with a 500. Such a file is left out, and said once per scrape in the log."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterator[Any]:
        readable, torn = [], []
        for f in sorted(glob.glob(os.path.join(self.path, "*.db"))):
            try:
                MultiProcessCollector.merge([f], accumulate=False)  # type: ignore[no-untyped-call]
            except (OSError, ValueError, struct.error, KeyError, IndexError):
                torn.append(os.path.basename(f))
                continue
            readable.append(f)
        if torn:
            log.warning("metrics: left out unreadable worker files %s (a worker killed as it wrote them)", torn)
        return iter(MultiProcessCollector.merge(readable, accumulate=True))  # type: ignore[no-untyped-call]


class _Forward:
    """Exposes the process-local registry inside a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        return iter(self.registry.collect())


async def render(engine: Engine) -> bytes:
    """The ``GET /metrics`` body: this process's (or every worker's) metrics and Redis's figures."""
    snap = await snapshot(engine)
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path is not None:
        registry.register(_Workers(path))  # type: ignore[arg-type]
    else:
        registry.register(_Forward(_metrics().registry))  # type: ignore[arg-type]
    registry.register(SnapshotCollector(snap))  # type: ignore[arg-type]
    registry.register(QueueCollector(await queue_snapshot(engine)))  # type: ignore[arg-type]
    # reading the workers' files is blocking I/O: keep it off the event loop
    return await asyncio.to_thread(generate_latest, registry)
