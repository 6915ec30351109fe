"""``/status.json`` from a registry alone: what each series becomes on the page's side."""

from __future__ import annotations

import os

from app.observability.metrics import Metrics
from app.status.snapshot import service_of_route, snapshot


def test_counters_gauges_and_histograms_land_under_their_service() -> None:
    metrics = Metrics()
    metrics.producer_success.labels("application", "logs").inc(40)
    metrics.producer_success.labels("application", "logs.dlq").inc(2)
    metrics.producer_error.labels("application", "logs", "_MSG_TIMED_OUT").inc(3)
    metrics.throttled.labels("infrastructure").inc(5)
    metrics.rejected.labels("application", "full").inc(7)
    metrics.lost.labels("application").inc(1)
    metrics.buffer_fill.labels("application").set(0.25)
    metrics.breaker_state.labels("application").set(1)
    metrics.breaker_state.labels("infrastructure").set(2)
    for latency in (0.002, 0.004, 0.02):
        metrics.send_duration.labels("application", "logs").observe(latency)
    metrics.http_requests.labels("gateway", "/api/v1/logs", "202").inc(4)
    metrics.http_requests.labels("application", "/api/v1/logs/batch", "202").inc(6)
    metrics.http_requests.labels("application", "/api/v1/logs", "429").inc(1)
    metrics.http_requests.labels("gateway", "/status.json", "200").inc(9)
    metrics.http_duration.labels("transaction", "/api/v1/transactions").observe(0.5)
    metrics.outbox_published.inc(11)
    metrics.outbox_pending.set(8)

    status = snapshot(metrics.registry)

    application = status["services"]["application"]
    assert application["acked"] == 42
    assert (application["errors"], application["rejected"], application["lost"]) == (3, 7, 1)
    assert application["bufferFill"] == 0.25
    assert application["breaker"] == "open"
    assert application["requests"] == {"202": 10, "429": 1}
    send = application["send"]
    assert send["count"] == 3 and send["le"][:4] == [0.001, 0.0025, 0.005, 0.01]
    assert send["counts"][:4] == [0, 1, 2, 2] and send["counts"][-1] == 3
    assert status["services"]["infrastructure"]["throttled"] == 5
    assert status["services"]["infrastructure"]["breaker"] == "half-open"
    transaction = status["services"]["transaction"]
    assert transaction["acked"] == 11  # published by the outbox relay
    assert transaction["breaker"] is None and transaction["http"]["count"] == 1
    assert status["outbox"]["published"] == 11
    assert status["outbox"]["pending"] is None and status["outbox"]["relay"] is None  # no relay in this process
    assert status["process"]["rss"] > 0 and status["process"]["cpuSeconds"] >= 0
    assert status["pid"] == os.getpid()

    metrics.outbox_relay_state.labels("standby").set(0)
    metrics.outbox_relay_state.labels("leading").set(1)
    outbox = snapshot(metrics.registry)["outbox"]
    assert outbox["relay"] == "leading" and outbox["pending"] == 8


def test_only_ingest_routes_count_for_a_service() -> None:
    assert service_of_route("/api/v1/logs") == "application"
    assert service_of_route("/api/v1/logs/batch") == "application"
    assert service_of_route("/api/v1/metrics/batch") == "infrastructure"
    assert service_of_route("/api/v1/transactions/<event_id>") == "transaction"
    assert service_of_route("/api/v1/logsX") is None
    assert service_of_route("/status.json") is None


def test_every_dialect_counts_for_its_stream_by_the_route_table_and_a_spool_is_shown() -> None:
    metrics = Metrics()
    metrics.http_requests.labels("gateway", "/loki/api/v1/push", "204").inc(3)
    metrics.http_requests.labels("infrastructure", "/api/v1/write", "204").inc(2)
    metrics.spool_events.labels("application").set(120)
    metrics.spool_bytes.labels("application").set(4096)
    metrics.spool_quarantined.labels("application").inc(1)

    status = snapshot(metrics.registry, {"/loki/api/v1/push": "application", "/api/v1/write": "infrastructure"})

    application, infrastructure = status["services"]["application"], status["services"]["infrastructure"]
    assert application["requests"] == {"204": 3} and infrastructure["requests"] == {"204": 2}
    assert application["spool"]["events"] == 120 and application["spool"]["bytes"] == 4096
    assert application["spool"]["quarantined"] == 1
    assert infrastructure["spool"] is None  # a memory-mode stream has none


def test_consumer_lag_sums_partitions_per_group_and_topic_and_keeps_the_longest_wait() -> None:
    from app.kafka.lag import LagReading, PartitionLag

    metrics = Metrics()
    assert snapshot(metrics.registry)["consumers"] == []
    metrics.consumer_lag.update(
        LagReading(
            [
                PartitionLag("log-processors", "application-logs", 0, committed=4, end=10, oldest_timestamp=1.0),
                PartitionLag("log-processors", "application-logs", 1, committed=2, end=5, oldest_timestamp=2.0),
                PartitionLag("audit", "transaction-logs", 0, committed=3, end=3),
            ],
            groups_asked=2, groups_known=2, failures=0,
        )
    )
    consumers = snapshot(metrics.registry)["consumers"]
    assert [(c["group"], c["topic"], c["lag"], c["partitions"]) for c in consumers] == [
        ("audit", "transaction-logs", 0, 1), ("log-processors", "application-logs", 9, 2),
    ]
    assert consumers[0]["oldestAge"] == 0 and consumers[1]["oldestAge"] > 1_000_000  # waited since 1970


def test_a_syslog_stream_of_its_own_counts_in_the_application_card_with_the_worse_gauges() -> None:
    metrics = Metrics()
    metrics.producer_success.labels("application", "logs").inc(10)
    metrics.producer_success.labels("syslog", "syslog").inc(5)
    metrics.lost.labels("syslog").inc(2)
    metrics.buffer_fill.labels("application").set(0.1)
    metrics.buffer_fill.labels("syslog").set(0.9)
    metrics.buffer_events.labels("application").set(3)
    metrics.buffer_events.labels("syslog").set(4)
    metrics.breaker_state.labels("application").set(0)
    metrics.breaker_state.labels("syslog").set(1)
    metrics.send_duration.labels("syslog", "syslog").observe(0.002)
    metrics.spool_events.labels("syslog").set(6)

    application = snapshot(metrics.registry)["services"]["application"]
    assert (application["acked"], application["lost"]) == (15, 2)
    assert (application["bufferFill"], application["bufferEvents"]) == (0.9, 7)
    assert application["breaker"] == "open"
    assert application["send"]["count"] == 1
    assert application["spool"]["events"] == 6

    metrics.breaker_state.labels("syslog").set(0)
    metrics.breaker_state.labels("application").set(2)
    assert snapshot(metrics.registry)["services"]["application"]["breaker"] == "half-open"
