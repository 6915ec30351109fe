"""``/status.json``: the process's Prometheus registry, reduced to what the status page draws.

Counters stay cumulative and histograms stay as cumulative buckets: the page computes rates
and percentiles from the difference between two snapshots, exactly as Prometheus would, so
this side keeps no history and any number of pages can poll it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

SERVICES = ("application", "infrastructure", "transaction")
# Series of a stream drawn in another's card: syslog records with a topic of their own (SYSLOG_TOPIC)
# are still the application shipper's, taken by its listener under its rate limit.
PART_OF = {"syslog": "application"}
BREAKER_STATES = {0: "closed", 1: "open", 2: "half-open"}
# When two streams share a card, the worse breaker shows.
_BREAKER_RANK = {"closed": 0, "half-open": 1, "open": 2}
# The native routes by path prefix, for a registry read without the route tables (the page's own
# tests); the gateway hands its route table to :func:`snapshot`, which covers every dialect.
ROUTE_PREFIXES = {
    "/api/v1/logs": "application",
    "/api/v1/metrics": "infrastructure",
    "/api/v1/transactions": "transaction",
}
# The spool of a disk-mode stream: gauges and counters labelled by service.
SPOOL_SERIES = {
    "spool_events": "events",
    "spool_bytes": "bytes",
    "spool_oldest_event_age_seconds": "oldestAge",
    "spool_replayed_events_total": "replayed",
    "spool_quarantined_events_total": "quarantined",
    "spool_dropped_events_total": "dropped",
    "spool_write_errors_total": "writeErrors",
}
# The consumer lag of the groups reading the gateway's topics (LAG_INTERVAL), by group, topic and partition.
CONSUMER_SERIES = ("kafka_consumergroup_lag", "kafka_consumergroup_lag_seconds")
# Counters labelled by service, summed over their other labels (topic, error, reason).
SERVICE_COUNTERS = {
    "kafka_producer_success_total": "acked",
    "kafka_producer_error_total": "errors",
    "producer_throttled_total": "throttled",
    "producer_rejected_total": "rejected",
    "kafka_producer_dead_letter_total": "deadLetters",
    "kafka_producer_lost_total": "lost",
}


class Histogram:
    """Cumulative bucket counts, summed over series that share the bucket bounds."""

    def __init__(self) -> None:
        self.buckets: dict[float, float] = {}
        self.count = 0.0
        self.sum = 0.0

    def add_bucket(self, le: str, value: float) -> None:
        bound = float(le)
        self.buckets[bound] = self.buckets.get(bound, 0.0) + value

    def to_json(self) -> dict[str, Any]:
        finite = sorted(bound for bound in self.buckets if math.isfinite(bound))
        return {
            "le": finite,
            "counts": [self.buckets[bound] for bound in finite],
            "count": self.count,
            "sum": self.sum,
        }


def service_of_route(route: str, routes: Mapping[str, str] | None = None) -> str | None:
    """The service a request's ``route`` label counts for: from the route table when given."""
    if routes is not None and route in routes:
        return routes[route]
    for prefix, service in ROUTE_PREFIXES.items():
        if route == prefix or route.startswith(prefix + "/"):
            return service
    return None


def _service() -> dict[str, Any]:
    return {field: 0.0 for field in SERVICE_COUNTERS.values()} | {
        "bufferFill": None,
        "bufferEvents": None,
        "breaker": None,
        "requests": {},
        "spool": None,  # a disk-mode stream's spool: events, bytes, oldestAge, replayed, quarantined, dropped
    }


def snapshot(registry: CollectorRegistry, routes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One reading of every series the page needs (call on the trio thread: gauges read live state).

    ``routes``: the service of each route path (the gateway's route table), so that requests of
    every dialect count for their stream."""
    services = {name: _service() for name in SERVICES}
    send = {name: Histogram() for name in SERVICES}
    http = {name: Histogram() for name in SERVICES}
    commit = Histogram()
    outbox: dict[str, Any] = {"pending": None, "oldestAge": None, "published": 0.0, "failures": 0.0, "relay": None}
    # Per consumer group and topic: records behind (summed over partitions) and the oldest one's wait.
    consumers: dict[tuple[str, str], dict[str, Any]] = {}
    process: dict[str, Any] = {"cpuSeconds": None, "rss": None, "startTime": None}

    for family in registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            label = labels.get("service", "")
            label = PART_OF.get(label, label)
            service = services.get(label)
            if name in SERVICE_COUNTERS:
                if service is not None:
                    service[SERVICE_COUNTERS[name]] += value
            elif name == "producer_buffer_fill_ratio" and service is not None:
                service["bufferFill"] = max(value, service["bufferFill"] or 0.0)
            elif name == "producer_buffer_events" and service is not None:
                service["bufferEvents"] = value + (service["bufferEvents"] or 0.0)
            elif name == "producer_circuit_breaker_state" and service is not None:
                state = BREAKER_STATES.get(int(value), "unknown")
                if _BREAKER_RANK.get(state, 3) >= _BREAKER_RANK.get(service["breaker"], -1):
                    service["breaker"] = state
            elif name.startswith("kafka_producer_send_duration_seconds") and label in send:
                _histogram_sample(send[label], name, labels, value)
            elif name in SPOOL_SERIES and service is not None:
                spool = service["spool"] = service["spool"] or {field: 0.0 for field in SPOOL_SERIES.values()}
                spool[SPOOL_SERIES[name]] += value
            elif name == "http_requests_total":
                routed = service_of_route(labels.get("route", ""), routes)
                if routed is not None:
                    requests = services[routed]["requests"]
                    requests[labels["status"]] = requests.get(labels["status"], 0.0) + value
            elif name.startswith("http_request_duration_seconds"):
                routed = service_of_route(labels.get("route", ""), routes)
                if routed is not None:
                    _histogram_sample(http[routed], name, labels, value)
            elif name.startswith("outbox_commit_duration_seconds"):
                _histogram_sample(commit, name, labels, value)
            elif name == "outbox_pending_events":
                outbox["pending"] = value
            elif name == "outbox_oldest_pending_age_seconds":
                outbox["oldestAge"] = value
            elif name == "outbox_published_total":
                outbox["published"] = value
            elif name == "outbox_publish_failures_total":
                outbox["failures"] = value
            elif name == "outbox_relay_state" and value == 1.0:
                outbox["relay"] = labels["state"]
            elif name in CONSUMER_SERIES:
                key = (labels["group"], labels["topic"])
                consumer = consumers.setdefault(
                    key, {"group": key[0], "topic": key[1], "lag": 0.0, "oldestAge": None, "partitions": 0}
                )
                if name == "kafka_consumergroup_lag":
                    consumer["lag"] += value
                    consumer["partitions"] += 1
                else:
                    consumer["oldestAge"] = max(consumer["oldestAge"] or 0.0, value)
            elif name == "process_cpu_seconds_total":
                process["cpuSeconds"] = value
            elif name == "process_resident_memory_bytes":
                process["rss"] = value
            elif name == "process_start_time_seconds":
                process["startTime"] = value

    if outbox["relay"] is None:
        # No relay in this process: its gauges were never set, and their zeros would read as "all published".
        outbox["pending"] = outbox["oldestAge"] = None
    # The transaction stream reaches Kafka through the outbox relay: what it published is what Kafka took.
    services["transaction"]["acked"] += outbox["published"]
    for name in SERVICES:
        services[name]["send"] = send[name].to_json()
        services[name]["http"] = http[name].to_json()
    outbox["commit"] = commit.to_json()
    return {
        "time": time.time(), "pid": os.getpid(), "services": services, "outbox": outbox, "process": process,
        "consumers": [consumers[key] for key in sorted(consumers)],
    }


def _histogram_sample(histogram: Histogram, name: str, labels: dict[str, str], value: float) -> None:
    if name.endswith("_bucket"):
        histogram.add_bucket(labels["le"], value)
    elif name.endswith("_count"):
        histogram.count += value
    elif name.endswith("_sum"):
        histogram.sum += value
