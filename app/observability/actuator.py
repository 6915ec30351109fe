"""Spring Boot Actuator's views of the Prometheus registry: the reference design's runbooks ask
``/actuator/metrics/{name}`` and ``/actuator/health``.

Nothing is counted twice: every answer is read from the registry ``/metrics`` renders, through
:data:`TABLE`, the one place that says which actuator name stands for which Prometheus family.
Each family is also there under its own name with dots, as Micrometer would have named it
(``producer_buffer_fill_ratio`` is ``producer.buffer.fill.ratio``; a ``_seconds`` or ``_bytes``
suffix is the base unit: ``kafka_producer_send_duration_seconds`` is
``kafka.producer.send.duration``, in seconds).

The shapes are Spring Boot's (its ``MetricsEndpoint``): ``{"names": [...]}``; a metric's
``measurements`` (COUNT of a counter, VALUE of a gauge, COUNT and TOTAL_TIME of a histogram of
seconds, COUNT and TOTAL of another) summed over the series that match ``?tag=key:value``
filters, and its ``availableTags`` less those filtered on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

Merge = Literal["sum", "max", "mean"]
UNIT_SUFFIXES = {"_seconds": "seconds", "_bytes": "bytes"}
# Histogram and counter samples that are no measurement.
_SKIPPED_SUFFIXES = ("_bucket", "_created", "_gsum", "_gcount")


@dataclass(frozen=True)
class Meter:
    """An actuator metric: which Prometheus family it reads, and how."""

    name: str
    family: str
    description: str | None = None  # None: the family's HELP
    base_unit: str | None = None  # None: from the family's unit suffix
    # Prometheus label -> actuator tag, for the names Spring's meters carry (uri, not route).
    tags: Mapping[str, str] = field(default_factory=dict)
    # How the VALUE of several series combine: Spring sums them; an average or a state does not sum.
    merge: Merge = "sum"
    scale: float = 1.0  # a unit the reference design's name implies (Kafka's latency is in ms)


TABLE: tuple[Meter, ...] = (
    # The reference design's names.
    Meter(
        "producer.circuit.breaker", "producer_circuit_breaker_state",
        description="Circuit breaker of a producer profile: 0 closed, 1 open, 2 half-open (the highest of the series).",
        merge="max",
    ),
    Meter(
        "kafka.producer.request-latency-avg", "kafka_broker_rtt_average_seconds",
        description="Average round trip of the producers' requests to the brokers over the last statistics "
        "interval (librdkafka's rtt.avg), the mean over brokers.",
        base_unit="milliseconds", merge="mean", scale=1000.0,
    ),
    Meter("producer.throttled", "producer_throttled"),
    Meter("kafka.producer.success", "kafka_producer_success"),
    Meter("kafka.producer.error", "kafka_producer_error"),
    Meter("kafka.producer.send.duration", "kafka_producer_send_duration_seconds"),
    # Spring Boot's and Micrometer's own.
    Meter("http.server.requests", "http_request_duration_seconds", tags={"route": "uri"}),
    Meter("process.cpu.time", "process_cpu_seconds"),
    Meter("process.start.time", "process_start_time_seconds"),
    Meter("process.files.open", "process_open_fds", base_unit="files"),
    Meter("process.files.max", "process_max_fds", base_unit="files"),
)


class BadTag(ValueError):
    """A ``tag`` parameter that is not ``key:value``."""


def parse_tags(values: Sequence[str]) -> dict[str, str]:
    """``?tag=key:value`` parameters, split at the first colon as Spring Boot does."""
    tags: dict[str, str] = {}
    for value in values:
        key, colon, tag_value = value.partition(":")
        if not colon or not key:
            raise BadTag("Each tag parameter must be in the form 'key:value'")
        tags[key] = tag_value
    return tags


def _dotted(family: str) -> tuple[str, str | None]:
    for suffix, unit in UNIT_SUFFIXES.items():
        if family.endswith(suffix) and len(family) > len(suffix):
            return family[: -len(suffix)].replace("_", "."), unit
    return family.replace("_", "."), None


def meters(families: Iterable[Metric]) -> dict[str, tuple[Meter, Metric]]:
    """Every actuator name the registry's families answer to: :data:`TABLE`'s, then each family's own."""
    by_family = {family.name: family for family in families}
    found: dict[str, tuple[Meter, Metric]] = {}
    for meter in TABLE:
        if meter.family in by_family:
            found[meter.name] = (meter, by_family[meter.family])
    short = {name: _dotted(name) for name in by_family}
    taken = [dotted for dotted, _ in short.values()]
    for name, family in by_family.items():
        dotted, unit = short[name]
        if unit is not None and taken.count(dotted) > 1:
            # Two families would share the name (kafka_consumergroup_lag and its _seconds): keep the unit in it.
            dotted, unit = name.replace("_", "."), None
        if dotted not in found:
            found[dotted] = (Meter(dotted, name, base_unit=unit), family)
    return found


def names(registry: CollectorRegistry) -> dict[str, Any]:
    """``GET /actuator/metrics``."""
    return {"names": sorted(meters(registry.collect()))}


def _series(family: Metric) -> list[tuple[dict[str, str], str, float]]:
    """(labels, statistic, value) of each sample that measures something."""
    out = []
    for sample in family.samples:
        suffix = sample.name[len(family.name):]
        if suffix in _SKIPPED_SUFFIXES:
            continue
        if family.type in {"histogram", "summary"}:
            if suffix == "_count":
                statistic = "COUNT"
            elif suffix == "_sum":
                statistic = "TOTAL"
            else:  # a summary's quantiles
                continue
        elif family.type == "counter":
            statistic = "COUNT"
        else:
            statistic = "VALUE"
        out.append((dict(sample.labels), statistic, sample.value))
    return out


def _statistics(family: Metric, base_unit: str | None) -> list[str]:
    if family.type in {"histogram", "summary"}:
        return ["COUNT", "TOTAL_TIME" if base_unit in {"seconds", "milliseconds"} else "TOTAL"]
    return ["COUNT"] if family.type == "counter" else ["VALUE"]


def _merge(values: list[float], how: Merge) -> float:
    if how == "max":
        return max(values)
    if how == "mean":
        return statistics.fmean(values)
    return math.fsum(values)


def metric(
    registry: CollectorRegistry, name: str, tags: Mapping[str, str], scope: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """``GET /actuator/metrics/{name}?tag=...``: None for a name no family answers to.

    ``scope``: tags that apply unless ``tags`` names them and the metric has them (a shipper's
    listener answers for its own service, as the reference design's shipper, a process of its own, did).
    """
    found = meters(registry.collect()).get(name)
    if found is None:
        return None
    meter, family = found
    base_unit = meter.base_unit if meter.base_unit is not None else _dotted(meter.family)[1]
    renamed = [
        ({meter.tags.get(key, key): value for key, value in labels.items()}, statistic, value)
        for labels, statistic, value in _series(family)
    ]
    carried = {key for labels, _, _ in renamed for key in labels}
    wanted = {key: value for key, value in (scope or {}).items() if key in carried and key not in tags}
    wanted.update(tags)
    matching = [
        (labels, statistic, value)
        for labels, statistic, value in renamed
        if all(labels.get(key) == value for key, value in wanted.items())
    ]
    measurements = []
    for statistic in _statistics(family, base_unit):
        source = "TOTAL" if statistic == "TOTAL_TIME" else statistic
        values = [value for _, kind, value in matching if kind == source]
        if statistic == "VALUE":
            if values:  # a gauge without series has no value (counters and histograms count 0)
                measurements.append({"statistic": statistic, "value": _merge(values, meter.merge) * meter.scale})
        else:
            scale = 1.0 if statistic == "COUNT" else meter.scale
            measurements.append({"statistic": statistic, "value": math.fsum(values) * scale})
    available: dict[str, set[str]] = {}
    for labels, _, _ in matching:
        for key, value in labels.items():
            if key not in wanted:
                available.setdefault(key, set()).add(value)
    return {
        "name": name,
        "description": meter.description if meter.description is not None else family.documentation,
        "baseUnit": base_unit,
        "measurements": measurements,
        "availableTags": [{"tag": key, "values": sorted(values)} for key, values in sorted(available.items())],
    }


def health(components: Mapping[str, str | None]) -> tuple[dict[str, Any], int]:
    """``GET /actuator/health``: UP when every component is (its reason otherwise), 503 when one is DOWN."""
    body: dict[str, Any] = {}
    for component, reason in components.items():
        body[component] = {"status": "UP"} if reason is None else {"status": "DOWN", "details": {"error": reason}}
    down = any(reason is not None for reason in components.values())
    return {"status": "DOWN" if down else "UP", "components": body}, 503 if down else 200
