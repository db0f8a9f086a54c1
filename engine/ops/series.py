"""Labelled counters and histograms whose series are written in one step.

prometheus-client's ``Counter`` and ``Histogram`` check on every ``inc``/``observe`` that the
metric is not a labelled parent, check the amount, look for an exemplar and walk the buckets in
Python: a dozen calls per observation, and the API makes four observations per request. Here a
series is looked up once (``child``) and is then just its values: a counter's one value, a
histogram's sum and one value per bucket, found by ``bisect``; with ``engine.ops.mpvalues`` this
cuts the cost of the API's two hooks per request (``engine.ops.metrics``; BENCHMARKS.md, "Design
measurements"). The values are value objects of the class given (``engine.ops.mpvalues.MmapValue``
with several workers, else prometheus-client's ``MutexValue``), made with the same keys prometheus-
client would use, so in multiprocess mode ``MultiProcessCollector`` reads them from the workers'
files as it reads its own, and in a single process ``collect()`` gives the same families.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

INF = float("inf")


class CounterFamily:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], value_class: Any) -> None:
        self.value_class = value_class
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], Any] = {}

    def child(self, *labelvalues: str) -> Any:
        """The series' value (``inc(amount)``), made on first use."""
        value = self._series.get(labelvalues)
        if value is None:
            value = self._series[labelvalues] = self.value_class(
                "counter", self.name, f"{self.name}_total", self.labelnames, labelvalues, self.documentation)
        return value

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, value in self._series.items():
            family.add_metric(labelvalues, value.get())
        return family


class GaugeFamily:
    """A gauge whose series are set (``child(...).set(v)``); with several workers, ``mode`` says how
    a scrape combines the workers' values (prometheus-client's multiprocess modes: ``max``...)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], value_class: Any,
                 mode: str = "max") -> None:
        self.value_class = value_class
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.mode = mode
        self._series: dict[tuple[str, ...], Any] = {}

    def child(self, *labelvalues: str) -> Any:
        value = self._series.get(labelvalues)
        if value is None:
            value = self._series[labelvalues] = self.value_class(
                "gauge", self.name, self.name, self.labelnames, labelvalues, self.documentation,
                multiprocess_mode=self.mode)
        return value

    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, value in self._series.items():
            family.add_metric(labelvalues, value.get())
        return family


class HistogramSeries:
    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...], buckets: list[Any], total: Any) -> None:
        self.bounds = bounds
        self.buckets = buckets
        self.sum = total

    def observe(self, amount: float) -> None:
        self.sum.inc(amount)
        self.buckets[bisect_left(self.bounds, amount)].inc(1)  # the first bound >= amount (+Inf last)


class HistogramFamily:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 value_class: Any) -> None:
        self.value_class = value_class
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = (*sorted(float(b) for b in buckets), INF)
        self.les: tuple[str, ...] = tuple(floatToGoString(b) for b in self.bounds)  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], HistogramSeries] = {}

    def child(self, *labelvalues: str) -> HistogramSeries:
        series = self._series.get(labelvalues)
        if series is None:
            names, doc, value = self.labelnames, self.documentation, self.value_class
            total = value("histogram", self.name, f"{self.name}_sum", names, labelvalues, doc)
            buckets = [value("histogram", self.name, f"{self.name}_bucket", (*names, "le"),
                                         (*labelvalues, le), doc) for le in self.les]
            series = self._series[labelvalues] = HistogramSeries(self.bounds, buckets, total)
        return series

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, series in self._series.items():
            cumulative, acc = [], 0.0
            for le, value in zip(self.les, series.buckets, strict=True):
                acc += value.get()
                cumulative.append((le, acc))
            family.add_metric(list(labelvalues), cumulative, series.sum.get())
        return family


class Families:
    """A collector for a ``CollectorRegistry``: the families' series in this process."""

    def __init__(self, *families: CounterFamily | GaugeFamily | HistogramFamily) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()
