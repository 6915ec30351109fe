"""The gateway's Prometheus metrics, on a registry of its own (one per running gateway).

Names follow the reference design so its queries work unchanged:
``kafka_producer_success_total``, ``kafka_producer_error_total``,
``kafka_producer_send_duration_seconds`` and ``producer_throttled_total``.
Labels are bounded: service is one of the profiles, topic one of their topics, route one
of the registered routes, error one of librdkafka's error names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from app.observability.consumer_lag import ConsumerLag
from app.observability.histogram import BatchHistogram
from app.observability.kafka_stats import KafkaStatistics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.producer_success = Counter(
            "kafka_producer_success", "Events acknowledged by Kafka.", ["service", "topic"], registry=r
        )
        self.producer_error = Counter(
            "kafka_producer_error", "Events Kafka did not take, by librdkafka error name.",
            ["service", "topic", "error"], registry=r,
        )
        # Observed once per delivered event, in batches of delivery reports.
        self.send_duration = BatchHistogram(
            "kafka_producer_send_duration_seconds",
            "From acceptance into the profile's buffer to Kafka's acknowledgement (its delivery report).",
            ["service", "topic"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.throttled = Counter(
            "producer_throttled", "Events refused with 429 by the rate limiter.", ["service"], registry=r
        )
        self.rejected = Counter(
            "producer_rejected", "Events refused with 503 because the profile's buffer was full or closed.",
            ["service", "reason"], registry=r,
        )
        self.dead_letters = Counter(
            "kafka_producer_dead_letter", "Events written to a dead-letter topic.", ["service", "topic"], registry=r
        )
        self.lost = Counter(
            "kafka_producer_lost", "Accepted events that reached neither their topic nor its dead-letter topic.",
            ["service"], registry=r,
        )
        self.client_errors = Counter(
            "kafka_client_error", "Errors librdkafka reported about the cluster connection.",
            ["service", "error"], registry=r,
        )
        self.buffer_events = Gauge(
            "producer_buffer_events", "Events accepted and not yet settled by Kafka.", ["service"], registry=r
        )
        self.buffer_bytes = Gauge(
            "producer_buffer_bytes", "Bytes accepted and not yet settled by Kafka.", ["service"], registry=r
        )
        self.buffer_fill = Gauge(
            "producer_buffer_fill_ratio", "Fill of the profile's buffer, the larger of events and bytes.",
            ["service"], registry=r,
        )
        self.breaker_state = Gauge(
            "producer_circuit_breaker_state", "Circuit breaker of a profile: 0 closed, 1 open, 2 half-open.",
            ["service"], registry=r,
        )
        self.http_requests = Counter(
            "http_requests", "HTTP requests by listener, route and status.", ["listener", "route", "status"], registry=r
        )
        self.ingest_events = Counter(
            "gateway_ingest_events",
            "Events decoded from ingest requests, by stream, dialect and whether the stream took them "
            "(refused: a rate limit, a full buffer, an open breaker, a failed commit).",
            ["service", "dialect", "outcome"], registry=r,
        )
        self.ingest_skipped = Counter(
            "gateway_ingest_skipped_values",
            "Values of taken ingest requests that became no event, by stream, dialect and reason "
            "(stale: Prometheus staleness markers; non_finite: other NaN or infinite samples; nan: collectd's null).",
            ["service", "dialect", "reason"], registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds", "HTTP request handling time.", ["listener", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.outbox_pending = Gauge("outbox_pending_events", "Transactions committed and not yet published.", registry=r)
        self.outbox_oldest_pending_age = Gauge(
            "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished transaction.", registry=r
        )
        self.outbox_published = Counter(
            "outbox_published", "Transactions published to Kafka by this instance's relay.", registry=r
        )
        self.outbox_publish_failures = Counter(
            "outbox_publish_failures", "Relay attempts that failed and started over.", registry=r
        )
        self.outbox_errors = Counter(
            "outbox_errors",
            "Outbox operations PostgreSQL refused for what they are, not for an outage (a bug to look into):"
            " write requests, status lookups and relay attempts, by kind (write, status, relay).",
            ["kind"], registry=r,
        )
        for kind in ("write", "status", "relay"):  # every series from the start, at 0
            self.outbox_errors.labels(kind)
        self.outbox_relay_state = Gauge(
            "outbox_relay_state", "1 for the relay's current state (standby, leading, failing).", ["state"], registry=r
        )
        self.outbox_commits = Histogram(
            "outbox_commit_events", "Transactions per group commit.", buckets=BATCH_BUCKETS, registry=r
        )
        self.outbox_commit_duration = Histogram(
            "outbox_commit_duration_seconds", "Time of one group commit.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.events_per_request = Histogram(
            "events_per_request", "Events in one accepted request.", ["service"], buckets=BATCH_BUCKETS, registry=r
        )
        self.collector_sensor_failures = Counter(
            "collector_sensor_failures", "Host sensor readings skipped because they failed or overran the interval.",
            ["sensor"], registry=r,
        )
        self.collector_dropped = Counter(
            "collector_dropped_events", "Host samples dropped because the infrastructure profile refused them.",
            ["reason"], registry=r,
        )
        # The durable spool of disk-mode streams (app/spool/).
        self.spool_events = Gauge("spool_events", "Events spooled on disk and not yet acknowledged by Kafka.", ["service"], registry=r)
        self.spool_bytes = Gauge("spool_bytes", "Bytes (keys and values) spooled on disk.", ["service"], registry=r)
        self.spool_oldest_age = Gauge(
            "spool_oldest_event_age_seconds", "How long the oldest spooled event has waited for Kafka.", ["service"], registry=r
        )
        self.spool_replayed = Counter(
            "spool_replayed_events", "Spooled events read back from disk to be sent (after a restart or an outage).",
            ["service"], registry=r,
        )
        self.spool_fsync_duration = Histogram(
            "spool_fsync_duration_seconds", "One group commit of the spool: its write and fsync.", ["service"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.spool_quarantined = Counter(
            "spool_quarantined_events", "Spooled events that could not be read back whole and were set aside.",
            ["service"], registry=r,
        )
        self.spool_dropped = Counter(
            "spool_dropped_events", "Spooled events dropped, oldest first, to take new ones (SPOOL_FULL=drop-oldest).",
            ["service"], registry=r,
        )
        self.spool_write_errors = Counter(
            "spool_write_errors", "Group commits of the spool that failed (disk full, I/O error): answered 503.",
            ["service"], registry=r,
        )
        self.spool_possible_duplicates = Counter(
            "spool_possible_duplicate_events",
            "Events found spooled at start-up that the previous run had handed to Kafka already: they may reach it twice.",
            ["service"], registry=r,
        )
        self.ready = Gauge(
            "gateway_ready", "1 when the listener's latest /ready evaluation found it ready, 0 when not.",
            ["listener"], registry=r,
        )
        self.kafka_statistics = KafkaStatistics()
        r.register(self.kafka_statistics)
        # kafka_consumergroup_lag and _lag_seconds of the groups reading the gateway's topics (LAG_INTERVAL).
        self.consumer_lag = ConsumerLag()
        r.register(self.consumer_lag)
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Gateway requests a remote shipper instance failed, by kind.",
            ["shipper", "error"], registry=r,
        )
        # The socket listeners (app/sockets/): syslog over UDP, TCP and TLS, and the Fluentd forward protocol.
        self.socket_connections = Gauge(
            "socket_connections", "Open connections of a socket listener.", ["listener"], registry=r
        )
        self.socket_closed = Counter(
            "socket_connections_closed",
            "Connections a socket listener closed or saw closed, by reason (eof, idle, limit, too_large, malformed,"
            " handshake, unacknowledged, shutdown, error).",
            ["listener", "reason"], registry=r,
        )
        self.syslog_parse_failures = Counter(
            "syslog_parse_failures",
            "Syslog lines that are no RFC 5424 or 3164 message, kept whole as the message, by reason.",
            ["reason"], registry=r,
        )
        self.syslog_dropped = Counter(
            "syslog_dropped", "Syslog messages dropped, by reason (UDP: full, unavailable, rate_limited, too_large;"
            " TCP: truncated at the end of a connection; shutdown).",
            ["reason"], registry=r,
        )
        self.forward_dropped = Counter(
            "forward_dropped", "Fluentd forward entries dropped, by reason (invalid, too_large, shutdown).",
            ["reason"], registry=r,
        )
        self.forward_acks = Counter(
            "forward_acks", "Fluentd forward chunks a client asked to be acknowledged, by outcome (sent, failed,"
            " timeout).", ["outcome"], registry=r,
        )
