"""Spring Boot Actuator's shapes read from a registry alone: names, measurements, tags, health."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from app.observability import actuator
from app.observability.metrics import Metrics

REFERENCE_NAMES = (
    "producer.circuit.breaker",
    "kafka.producer.request-latency-avg",
    "producer.throttled",
    "kafka.producer.success",
    "kafka.producer.error",
)


def statistics(found: dict[str, Any] | None) -> dict[str, float]:
    assert found is not None
    return {m["statistic"]: m["value"] for m in found["measurements"]}


def tags(found: dict[str, Any] | None) -> dict[str, list[str]]:
    assert found is not None
    return {t["tag"]: t["values"] for t in found["availableTags"]}


def test_the_table_names_families_the_gateway_registers() -> None:
    families = {family.name for family in Metrics().registry.collect()}
    assert {meter.family for meter in actuator.TABLE} - families == set()
    assert len({meter.name for meter in actuator.TABLE}) == len(actuator.TABLE)


def test_names_are_the_reference_designs_and_every_family_with_dots() -> None:
    names = actuator.names(Metrics().registry)["names"]
    assert names == sorted(names)
    assert set(REFERENCE_NAMES) <= set(names)
    # Micrometer's convention, inverted: dots for underscores, a unit suffix as the base unit.
    assert {"producer.buffer.fill.ratio", "kafka.producer.send.duration", "outbox.oldest.pending.age",
            "http.server.requests", "process.cpu.time"} <= set(names)


def test_a_counter_is_a_count_summed_over_the_matching_series() -> None:
    metrics = Metrics()
    metrics.producer_success.labels("application", "application-logs").inc(40)
    metrics.producer_success.labels("application", "application-logs.dlq").inc(2)
    metrics.producer_success.labels("infrastructure", "infrastructure-logs").inc(7)
    found = actuator.metric(metrics.registry, "kafka.producer.success", {})
    assert found is not None and found["name"] == "kafka.producer.success"
    assert found["description"] == "Events acknowledged by Kafka." and found["baseUnit"] is None
    assert found["measurements"] == [{"statistic": "COUNT", "value": 49.0}]
    assert tags(found) == {
        "service": ["application", "infrastructure"],
        "topic": ["application-logs", "application-logs.dlq", "infrastructure-logs"],
    }
    # Filtered: only those series; the tag filtered on is no longer offered.
    found = actuator.metric(metrics.registry, "kafka.producer.success", {"topic": "application-logs"})
    assert statistics(found) == {"COUNT": 40.0} and tags(found) == {"service": ["application"]}


def test_a_shippers_scope_applies_unless_the_request_names_the_tag() -> None:
    metrics = Metrics()
    metrics.throttled.labels("application").inc(3)
    metrics.throttled.labels("infrastructure").inc(5)
    scope = {"service": "application"}
    assert statistics(actuator.metric(metrics.registry, "producer.throttled", {}, scope)) == {"COUNT": 3.0}
    other = actuator.metric(metrics.registry, "producer.throttled", {"service": "infrastructure"}, scope)
    assert statistics(other) == {"COUNT": 5.0}
    # A family without the tag is not narrowed by it.
    metrics.outbox_published.inc(4)
    assert statistics(actuator.metric(metrics.registry, "outbox.published", {}, scope)) == {"COUNT": 4.0}


def test_nothing_counted_yet_is_zero_and_a_gauge_without_series_has_no_value() -> None:
    metrics = Metrics()
    assert statistics(actuator.metric(metrics.registry, "kafka.producer.error", {})) == {"COUNT": 0.0}
    found = actuator.metric(metrics.registry, "producer.circuit.breaker", {})
    assert found is not None and found["measurements"] == [] and found["availableTags"] == []


def test_the_breaker_is_the_worst_state_and_the_latency_a_mean_in_milliseconds() -> None:
    metrics = Metrics()
    metrics.breaker_state.labels("application").set(0)
    metrics.breaker_state.labels("infrastructure").set(1)
    assert statistics(actuator.metric(metrics.registry, "producer.circuit.breaker", {})) == {"VALUE": 1.0}
    assert statistics(actuator.metric(metrics.registry, "producer.circuit.breaker", {"service": "application"})) == {
        "VALUE": 0.0
    }
    stats = {
        "application": '{"brokers": {"a": {"name": "127.0.0.1:9092/1", "nodeid": 1, "rtt": {"avg": 2000, "cnt": 5}},'
        ' "b": {"name": "127.0.0.1:9094/2", "nodeid": 2, "rtt": {"avg": 4000, "cnt": 5}}}}',
    }
    metrics.kafka_statistics.watch("application", lambda: stats["application"])
    found = actuator.metric(metrics.registry, "kafka.producer.request-latency-avg", {})
    assert found is not None and found["baseUnit"] == "milliseconds"
    assert statistics(found) == {"VALUE": pytest.approx(3.0)}
    assert tags(found)["broker"] == ["127.0.0.1:9092/1", "127.0.0.1:9094/2"]


def test_a_histogram_of_seconds_is_a_timer() -> None:
    metrics = Metrics()
    for seconds in (0.25, 0.5):
        metrics.http_duration.labels("application", "/api/v1/logs").observe(seconds)
    metrics.http_duration.labels("gateway", "/api/v1/logs").observe(1.0)
    found = actuator.metric(metrics.registry, "http.server.requests", {"uri": "/api/v1/logs"})
    assert found is not None and found["baseUnit"] == "seconds"
    assert found["measurements"] == [{"statistic": "COUNT", "value": 3.0}, {"statistic": "TOTAL_TIME", "value": 1.75}]
    assert tags(found) == {"listener": ["application", "gateway"]}  # `route` is Spring's `uri`
    metrics.events_per_request.labels("application").observe(10)
    assert statistics(actuator.metric(metrics.registry, "events.per.request", {})) == {"COUNT": 1.0, "TOTAL": 10.0}


def test_two_families_that_would_share_a_name_keep_the_unit_in_it() -> None:
    registry = CollectorRegistry()
    Gauge("consumer_lag", "records", registry=registry).set(5)
    Gauge("consumer_lag_seconds", "age", registry=registry).set(7)
    names = actuator.names(registry)["names"]
    assert names == ["consumer.lag", "consumer.lag.seconds"]
    assert statistics(actuator.metric(registry, "consumer.lag.seconds", {})) == {"VALUE": 7.0}


def test_unknown_names_and_malformed_tags() -> None:
    assert actuator.metric(Metrics().registry, "jvm.memory.used", {}) is None
    assert actuator.parse_tags(["service:application", "uri:/a:b"]) == {"service": "application", "uri": "/a:b"}
    for bad in (["service"], [":x"]):
        with pytest.raises(actuator.BadTag, match="key:value"):
            actuator.parse_tags(bad)


def test_health_is_up_only_when_every_component_is() -> None:
    assert actuator.health({"kafka": None, "db": None}) == (
        {"status": "UP", "components": {"kafka": {"status": "UP"}, "db": {"status": "UP"}}}, 200,
    )
    body, status = actuator.health({"kafka": "circuit breaker open: 10 failures", "db": None})
    assert status == 503 and body["status"] == "DOWN"
    assert body["components"]["kafka"] == {"status": "DOWN", "details": {"error": "circuit breaker open: 10 failures"}}
