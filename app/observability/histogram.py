"""A Prometheus histogram that takes a whole batch of observations in one step.

``prometheus_client.Histogram.observe`` takes a lock and walks the buckets in Python for every
value: per delivered event, that cost more than producing the event. Delivery reports arrive in
batches on the trio thread, so this histogram counts them with one ``bisect`` per value and no
lock (it is read, like every gauge here, on the trio thread that renders ``/metrics``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class BatchHistogramChild:
    """One label set's buckets (not cumulative) and sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Sequence[float]) -> None:
        counts, bounds, where = self.counts, self._bounds, bisect.bisect_left
        for value in values:
            counts[where(bounds, value)] += 1
        self.sum += math.fsum(values)


class BatchHistogram(Collector):
    """``name_bucket``, ``name_count`` and ``name_sum`` per label set, as prometheus_client writes them."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *, buckets: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        bounds = sorted(float(b) for b in buckets)
        self._bounds = tuple(bounds) if bounds and bounds[-1] == math.inf else (*bounds, math.inf)
        self._children: dict[tuple[str, ...], BatchHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> BatchHistogramChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes the labels {self._labelnames}, not {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = BatchHistogramChild(self._bounds)
        return child

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        bounds = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, child.counts):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family
