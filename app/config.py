"""Every knob of the gateway: one typed settings object, loaded from the environment.

Each setting is declared once, below: its type, its bound (a ``msgspec.Meta`` constraint or a
``Literal`` of its values), its default and its one-line description. :func:`load_settings`
converts the environment's strings with ``msgspec.convert``; ``scripts/config_doc.py`` writes
docs/configuration.md from the same declaration (``make docs``). The environment variables are the
upper-cased field names; producer profile fields take the profile's prefix (``APPLICATION_``,
``INFRASTRUCTURE_``, ``TRANSACTION_``). Checks that involve several settings are in ``_validate``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

SECONDS = 1.0
HOURS = 3600 * SECONDS
DAYS = 24 * HOURS
MILLISECONDS = 1
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB
INT32_MAX = 2**31 - 1


ROLES = ("gateway", "application", "infrastructure", "transaction")
TLS_LISTENERS = (*ROLES, "otlp-grpc")


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use."""


# The kinds most settings share; each field adds its description, and bounds of its own where they differ.
Port = Annotated[int, Meta(ge=0, le=65535)]
# A wait that must end: above zero and finite.
Timeout = Annotated[float, Meta(gt=0, le=1 * HOURS)]
# The period of a background task; 0 turns the task off.
Interval = Annotated[float, Meta(ge=0, le=1 * DAYS)]
# Kafka's topic names, short enough for the .dlq and .checkpoint topics named after them.
Topic = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,200}$", extra={"bound": "1 to 200 of A-Z a-z 0-9 . _ -"})]

Acks = Literal["0", "1", "all", "-1"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
Durability = Literal["memory", "disk"]
SpoolFull = Literal["refuse", "drop-oldest"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "text"]


def about(description: str) -> Meta:
    """A setting's one-line documentation, as the configuration reference shows it."""
    return Meta(description=description)


@dataclass(frozen=True)
class ProfileSettings:
    """One producer profile: its topic, librdkafka producer options and buffer bounds.

    The application and infrastructure profiles feed their producer through a bounded buffer and
    dead-letter what Kafka refuses for good. Transactions go through the outbox instead: the
    transaction profile's topic, librdkafka options and rate limit configure the relay's
    transactional producer and the shipper's routes, its buffer bounds only size that producer's
    librdkafka queue, and it has no dead-letter topic.
    """

    topic: Annotated[
        Topic, about("the topic; for application and infrastructure, `<topic>.dlq` is its dead-letter topic")
    ]
    acks: Annotated[Acks, about("librdkafka `acks`")] = "1"
    compression: Annotated[Compression, about("`compression.type`")] = "lz4"
    batch_size: Annotated[int, Meta(ge=1, le=256 * MIB), about("`batch.size` in bytes")] = 32 * KIB
    linger_ms: Annotated[int, Meta(ge=0, le=900_000), about("`linger.ms`")] = 10 * MILLISECONDS
    retries: Annotated[int, Meta(ge=0, le=INT32_MAX), about("`retries`")] = 3
    retry_backoff_ms: Annotated[
        int, Meta(ge=1, le=300_000), about("first retry backoff (`retry.backoff.ms`)")
    ] = 100 * MILLISECONDS
    retry_backoff_max_ms: Annotated[
        int, Meta(ge=1, le=300_000), about("backoff ceiling; backoff doubles up to it (`retry.backoff.max.ms`)")
    ] = 1000 * MILLISECONDS
    delivery_timeout_ms: Annotated[
        int,
        Meta(ge=1, le=86_400_000),
        about(
            "`delivery.timeout.ms`: after it, a record is dead-lettered "
            "(a transaction's Kafka transaction is aborted and published again)"
        ),
    ] = 30_000 * MILLISECONDS
    idempotence: Annotated[bool, about("`enable.idempotence`")] = False
    rate_limit: Annotated[
        float,
        Meta(ge=0, le=1e9),
        about("events per second the shipper's routes accept (token bucket; 0 disables); more answer 429"),
    ] = 50_000.0
    # The bound on events accepted (202) but not yet acknowledged by Kafka, in count and bytes
    # (for transactions, bounded by OUTBOX_MAX_PENDING instead, the relay producer's queue size).
    buffer_events: Annotated[
        int,
        Meta(ge=1, le=100_000_000),
        about(
            "most events accepted and not yet settled by Kafka "
            "(transaction: only the size of the relay producer's librdkafka queue)"
        ),
    ] = 100_000
    buffer_bytes: Annotated[
        int,
        Meta(ge=1, le=64 * GIB),
        about("most bytes (keys + values) accepted and not yet settled (transaction: as for `_BUFFER_EVENTS`)"),
    ] = 64 * MIB
    # memory: 202 means taken into the buffer above; disk: fsynced into the stream's spool first
    # (app/spool/), which feeds Kafka with acks=all and an idempotent producer.
    durability: Annotated[
        Durability,
        about(
            "`memory`: 202 once in the buffer above; `disk`: 202 once fsynced in the stream's spool, which then "
            "feeds the buffer (acks=all and idempotence forced on); see "
            "[What a 202 means](guarantees.md#what-a-202-means). "
            "Transactions are always durable, in the outbox: only `memory` is accepted for them"
        ),
    ] = "memory"
    spool_bytes: Annotated[
        int,
        Meta(ge=1, le=16 * TIB),
        about("disk mode: most bytes (keys + values) spooled and not yet acknowledged by Kafka (unused for transactions)"),
    ] = 1024 * MIB
    spool_full: Annotated[
        SpoolFull,
        about(
            "disk mode, past `_SPOOL_BYTES`: `refuse` answers 503 with Retry-After; `drop-oldest` drops the oldest "
            "spooled events, counted in `spool_dropped_events_total` and logged (unused for transactions)"
        ),
    ] = "refuse"

    @property
    def dead_letter_topic(self) -> str:
        """Where a channel profile writes what Kafka refuses for good; the transaction relay writes none."""
        return f"{self.topic}.dlq"

    @property
    def disk(self) -> bool:
        return self.durability == "disk"


def _application_profile() -> ProfileSettings:
    return ProfileSettings(topic="application-logs")


def _infrastructure_profile() -> ProfileSettings:
    return ProfileSettings(topic="infrastructure-logs", rate_limit=10_000.0)


def _transaction_profile() -> ProfileSettings:
    return ProfileSettings(
        topic="transaction-logs",
        acks="all",
        idempotence=True,
        retries=INT32_MAX,
        rate_limit=10_000.0,
        buffer_events=20_000,
    )


PROFILE_DEFAULTS = {
    "application": _application_profile,
    "infrastructure": _infrastructure_profile,
    "transaction": _transaction_profile,
}


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration. Build it with :func:`load_settings`."""

    # Processes and listeners.
    roles: Annotated[
        str,
        Meta(extra={"bound": "comma-separated, any of " + ", ".join(ROLES)}),
        about("the listeners this process hosts (`--role` on the command line)"),
    ] = "gateway,application,infrastructure,transaction"
    workers: Annotated[
        int,
        Meta(ge=1, le=256),
        about("copies of the process serving the same ports (`--workers`; see [Scaling](operations.md#scaling))"),
    ] = 1
    reuse_port: Annotated[
        bool, about("bind the listeners with `SO_REUSEPORT` (set by `--workers` for its copies)")
    ] = False
    host: Annotated[str, about("address the four listeners bind (use `0.0.0.0` in a container)")] = "127.0.0.1"
    gateway_port: Annotated[Port, about("gateway listener port (0: any free port)")] = 8080
    application_port: Annotated[Port, about("application shipper port (0: any free port)")] = 8081
    infrastructure_port: Annotated[Port, about("infrastructure shipper port (0: any free port)")] = 8082
    transaction_port: Annotated[Port, about("transaction shipper port (0: any free port)")] = 8083

    # Kafka.
    kafka_bootstrap_servers: Annotated[
        str, Meta(min_length=1), about("Kafka bootstrap servers, comma-separated")
    ] = "127.0.0.1:9092"
    kafka_client_id: Annotated[
        str, Meta(min_length=1), about("client id prefix (the profile name is appended)")
    ] = "kafka-log-gateway"
    kafka_security_protocol: Annotated[
        SecurityProtocol, about("the security protocol of every Kafka client of the gateway")
    ] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[SaslMechanism, about("the SASL mechanism")] = ""
    kafka_sasl_username: Annotated[str, about("SASL user")] = ""
    kafka_sasl_password: Annotated[str, about("SASL password")] = ""
    kafka_ssl_ca_location: Annotated[str, about("CA certificate file (PEM) to verify the brokers")] = ""
    kafka_ssl_certificate_location: Annotated[str, about("client certificate (PEM) for mutual TLS")] = ""
    kafka_ssl_key_location: Annotated[str, about("client private key (PEM)")] = ""
    kafka_ssl_key_password: Annotated[str, about("its password")] = ""
    kafka_statistics_interval_ms: Annotated[
        int,
        Meta(ge=0, le=86_400_000),
        about(
            "milliseconds between two librdkafka statistics reports (queue, retries, broker round trips), "
            "exported as `kafka_client_*` and `kafka_broker_*` metrics; 0 disables them"
        ),
    ] = 5000 * MILLISECONDS
    topic_partitions: Annotated[
        int, Meta(ge=1, le=10_000), about("partitions of the topics created at start-up")
    ] = 3
    topic_replication_factor: Annotated[
        int,
        Meta(ge=-1, le=32767, extra={"bound": "-1, or 1 to 32767"}),
        about("their replication factor; -1 takes the broker's default (`default.replication.factor`)"),
    ] = -1

    # The producer profiles, one per stream (their own table in the reference).
    application: ProfileSettings = field(default_factory=_application_profile)
    infrastructure: ProfileSettings = field(default_factory=_infrastructure_profile)
    transaction: ProfileSettings = field(default_factory=_transaction_profile)

    # Shippers that run in other processes.
    application_urls: Annotated[
        str,
        about(
            "base URLs of application shippers in other processes, comma-separated, for a gateway that does not "
            "host one; empty: `http://<HOST>:<APPLICATION_PORT>`. A host name stands for every address it resolves to"
        ),
    ] = ""
    infrastructure_urls: Annotated[str, about("the same for the infrastructure shipper")] = ""
    transaction_urls: Annotated[str, about("the same for the transaction shipper")] = ""
    upstream_timeout: Annotated[
        Timeout, about("seconds the gateway waits for a remote shipper's answer (then 504)")
    ] = 10 * SECONDS
    upstream_connect_timeout: Annotated[
        Timeout, about("seconds to connect to a remote shipper instance (then the next instance is tried)")
    ] = 1 * SECONDS
    upstream_connections: Annotated[
        int,
        Meta(ge=1, le=100_000),
        about("most connections the gateway keeps open to one remote shipper; past it, 503"),
    ] = 256

    # The host collector and consumer lag.
    collector_interval: Annotated[
        Interval, about("seconds between two samples of every sensor of the host collector; 0 turns it off")
    ] = 1 * SECONDS
    metrics_rate: Annotated[
        float,
        Meta(ge=0, le=10_000_000),
        about("above 0, the collector re-emits its latest samples at this many events/s (`--metrics-rate`, for load tests)"),
    ] = 0.0
    metrics_host: Annotated[str, about("`host` of collected samples; empty: this machine's host name")] = ""
    lag_interval: Annotated[
        Interval,
        about(
            "seconds between two readings of the consumer lag of the groups that read the gateway's topics "
            "(`kafka_consumergroup_lag`, see [Consumer lag](monitoring.md#consumer-lag)); 0 turns it off"
        ),
    ] = 15 * SECONDS
    lag_groups: Annotated[
        str, about("the consumer groups whose lag is read, comma-separated; empty: every group of the cluster")
    ] = ""
    lag_max_groups: Annotated[
        int,
        Meta(ge=1, le=100_000),
        about("most groups asked per reading: those known to read the topics first, then the others in turn"),
    ] = 100
    lag_timeout: Annotated[Timeout, about("seconds one reading may take, every request to Kafka included")] = 5 * SECONDS

    # Request limits.
    max_request_bytes: Annotated[int, Meta(ge=1, le=1 * GIB), about("largest request body, as sent")] = 10 * MIB
    max_decompressed_bytes: Annotated[
        int, Meta(ge=1, le=4 * GIB), about("largest body after decompression")
    ] = 32 * MIB
    max_batch_events: Annotated[int, Meta(ge=1, le=1_000_000), about("most events in one batch request")] = 10_000
    max_event_bytes: Annotated[
        int, Meta(ge=1, le=1 * GIB), about("largest single event, as written to Kafka; at most `MAX_REQUEST_BYTES`")
    ] = 1 * MIB

    # The transactional outbox.
    database_url: Annotated[
        str, about("PostgreSQL URL for the transactional outbox; empty disables it")
    ] = ""
    outbox_max_pending: Annotated[
        int, Meta(ge=1, le=1_000_000_000), about("unpublished transactions past which new ones are refused with 503")
    ] = 1_000_000
    outbox_group_events: Annotated[
        int, Meta(ge=1, le=100_000), about("most transactions committed together in one group commit")
    ] = 1000
    outbox_queue: Annotated[
        int, Meta(ge=1, le=10_000_000), about("most requests waiting for a group commit; more are refused with 503")
    ] = 10_000
    outbox_queue_bytes: Annotated[
        int,
        Meta(ge=1, le=64 * GIB),
        about("most bytes (keys + payloads) of the requests waiting for a group commit; more are refused with 503"),
    ] = 64 * MIB
    outbox_write_timeout: Annotated[
        Timeout, about("seconds a request waits for its commit before a 503")
    ] = 5 * SECONDS
    outbox_relay_batch: Annotated[
        int, Meta(ge=1, le=100_000), about("most rows the relay publishes in one Kafka transaction")
    ] = 1000
    outbox_poll_interval: Annotated[
        Timeout,
        about(
            "seconds between the relay's looks for work (new commits wake it at once) "
            "and a standby's tries for the leadership"
        ),
    ] = 0.5 * SECONDS
    outbox_kafka_timeout: Annotated[
        Timeout, about("seconds a relay transaction may take before it is aborted and retried")
    ] = 10 * SECONDS
    outbox_retention_hours: Annotated[
        float,
        Meta(ge=0, le=10 * 365 * 24),
        about("hours after which published rows are purged; idempotency keys are remembered as long"),
    ] = 168.0
    outbox_relay_id: Annotated[
        str,
        about(
            "the relay's Kafka `transactional.id`; empty: `<KAFKA_CLIENT_ID>.<transaction topic>.outbox-relay`. "
            "Every instance sharing one database must use the same"
        ),
    ] = ""

    # The disk spool of disk-mode streams.
    spool_dir: Annotated[
        str,
        about(
            "where disk-mode streams keep their spools, one SQLite database per stream (`<stream>.sqlite`, a damaged "
            "one moved to `quarantine/`); empty: `.local/spool` under the working directory"
        ),
    ] = ""
    spool_min_free_bytes: Annotated[
        int,
        Meta(ge=0, le=1 * TIB),
        about(
            "a spool does not start, and its stream refuses new events (503), while the spool's file system "
            "has less free than this; 0: no floor"
        ),
    ] = 64 * MIB

    # Overload, readiness and shutdown.
    breaker_failures: Annotated[
        int, Meta(ge=1, le=1_000_000), about("consecutive delivery failures that open a profile's circuit breaker")
    ] = 10
    breaker_open_seconds: Annotated[
        Timeout, about("seconds an open breaker refuses before it probes Kafka (half-open)")
    ] = 5 * SECONDS
    retry_after_seconds: Annotated[int, Meta(ge=1, le=3600), about("the `Retry-After` of 503 answers")] = 1
    ready_timeout: Annotated[
        float,
        # librdkafka's socket.timeout.ms stops at 300,000.
        Meta(gt=0, le=300),
        about("seconds `/ready` waits for Kafka metadata (and PostgreSQL)"),
    ] = 2 * SECONDS
    graceful_timeout: Annotated[Interval, about("seconds in-flight requests get to finish on shutdown")] = 5 * SECONDS
    flush_timeout: Annotated[
        Interval, about("seconds the profiles get to drain and flush on shutdown")
    ] = 30 * SECONDS

    # Authentication.
    api_keys: Annotated[
        str,
        about(
            "API keys as `name:key[:events_per_second[:subject]]`, comma-separated; setting any turns authentication "
            "on; a subject (`CN=agent-1`, `DNS:agent-1.example`) binds a client certificate to the key "
            "(see [Security](security.md))"
        ),
    ] = ""
    api_keys_file: Annotated[
        str,
        about(
            'a JSON file `{"keys":[{"name":"team-a","key":"...","rateLimit":1000,"subjects":["CN=agent-1"]}]}`, '
            "read at start-up"
        ),
    ] = ""

    # Agents' protocols: syslog, the Fluentd forward protocol, Elasticsearch _bulk (hosted with the application role).
    syslog_port: Annotated[
        Port,
        about(
            "syslog (RFC 5424 and 3164) over UDP and TCP (RFC 6587: octet-counted or LF/CRLF/NUL-terminated, told "
            "apart per message), hosted with the application role; 0 turns both off"
        ),
    ] = 5514
    syslog_tls_port: Annotated[
        Port, about("syslog over TLS (RFC 5425), served once the two below are set; 0 turns it off")
    ] = 6514
    syslog_tls_cert_file: Annotated[
        str, about("PEM certificate (chain) of the syslog TLS listener; empty: `TLS_CERT_FILE`'s, when set")
    ] = ""
    syslog_tls_key_file: Annotated[str, about("PEM private key of that certificate; set both or neither")] = ""
    syslog_max_message_bytes: Annotated[
        int,
        Meta(ge=1, le=64 * MIB),
        about(
            "largest syslog message; a TCP octet count or line over it closes the connection, "
            "a datagram over it is dropped and counted"
        ),
    ] = 64 * KIB
    syslog_max_connections: Annotated[
        int,
        Meta(ge=1, le=1_000_000),
        about(
            "open syslog TCP/TLS connections; one more is closed at once "
            '(`socket_connections_closed_total{reason="limit"}`)'
        ),
    ] = 1024
    syslog_idle_timeout: Annotated[
        float,
        Meta(gt=0, le=1 * DAYS),
        about("seconds a syslog connection may send nothing before it is closed"),
    ] = 600 * SECONDS
    syslog_topic: Annotated[
        str,
        Meta(pattern=r"^[A-Za-z0-9._-]{0,200}$", extra={"bound": "empty, or a topic name as `_TOPIC`'s"}),
        about(
            "the topic syslog records go to (created like the others, with its `.dlq`); "
            "empty: the application stream's topic"
        ),
    ] = ""
    forward_port: Annotated[
        Port, about("the Fluentd forward protocol over TCP, hosted with the application role; 0 turns it off")
    ] = 24224
    forward_shared_key: Annotated[
        str, about("when set, the forward handshake (HELO, PING, PONG) with this shared key before any event")
    ] = ""
    forward_max_message_bytes: Annotated[
        int,
        Meta(ge=1, le=1 * GIB),
        about("largest forward message (a CompressedPackedForward chunk inflates up to `MAX_DECOMPRESSED_BYTES`)"),
    ] = 8 * MIB
    forward_max_connections: Annotated[
        int, Meta(ge=1, le=1_000_000), about("open forward connections, as for syslog")
    ] = 1024
    forward_idle_timeout: Annotated[
        float,
        Meta(gt=0, le=1 * DAYS),
        about("seconds a forward connection may send nothing before it is closed"),
    ] = 600 * SECONDS
    es_compat_version: Annotated[
        str,
        Meta(pattern=r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$", extra={"bound": "a version such as 8.17.0"}),
        about(
            "the Elasticsearch version `GET /` on 8081 reports to `_bulk` clients "
            "(its Lucene and compatibility versions follow the major)"
        ),
    ] = "8.17.0"

    # TLS on the listeners.
    tls_cert_file: Annotated[
        str,
        about(
            "PEM certificate (chain) of the listeners: when set with the key below, TLS 1.2+ (HTTP/2 through ALPN) on "
            "those in `TLS_LISTENERS`; syslog over TLS serves it too unless `SYSLOG_TLS_CERT_FILE` is set "
            "(see [Security](security.md))"
        ),
    ] = ""
    tls_key_file: Annotated[
        str,
        about(
            "PEM private key of that certificate (no passphrase); set both or neither. "
            "Both are read again on SIGHUP and when they change"
        ),
    ] = ""
    tls_client_ca_file: Annotated[
        str,
        about(
            "PEM CA certificate(s): mutual TLS, every client must present a certificate they signed; "
            "a certificate's subject can stand for an API key"
        ),
    ] = ""
    tls_listeners: Annotated[
        str,
        Meta(extra={"bound": "comma-separated, any of " + ", ".join(TLS_LISTENERS)}),
        about(
            "the listeners served over TLS once a certificate is set; the others stay plain "
            "(e.g. for probes and scrapes that have no client certificate)"
        ),
    ] = ",".join(TLS_LISTENERS)
    tls_reload_interval: Annotated[
        Interval,
        about(
            "seconds between two looks at the certificate, key and client CA files' modification times "
            "(a change reloads them); 0: only SIGHUP reloads"
        ),
    ] = 5 * SECONDS

    # OTLP over gRPC.
    otlp_grpc_port: Annotated[
        Port, about("OTLP over gRPC (logs and metrics `Export`), hosted with the gateway role; 0 turns it off")
    ] = 4317
    otlp_grpc_workers: Annotated[
        int, Meta(ge=1, le=1024), about("threads serving gRPC calls (each hands its export to the pipeline and waits)")
    ] = 8
    otlp_grpc_max_concurrent_rpcs: Annotated[
        int,
        Meta(ge=1, le=100_000),
        about("gRPC calls under way or queued at once; more are refused with RESOURCE_EXHAUSTED"),
    ] = 256

    # Logs and tracing.
    log_level: Annotated[LogLevel, about("Python log level")] = "INFO"
    log_format: Annotated[
        LogFormat,
        about(
            "`json`: one JSON object per line on stderr (`timestamp`, `level`, `logger`, `message`, and `service`, "
            "`topic`, `error`, `event_id`, `trace_id`, `count` when a line concerns events), for log collectors; "
            "`text`: plain lines, for a terminal"
        ),
    ] = "json"
    otel_exporter_otlp_endpoint: Annotated[
        str,
        about(
            "an OTLP/HTTP collector's base URL (e.g. `http://127.0.0.1:4318`): spans of ingest requests go to its "
            "`/v1/traces` (see [Tracing](monitoring.md#tracing))"
        ),
    ] = ""
    otel_exporter_otlp_traces_endpoint: Annotated[
        str, about("the full OTLP/HTTP traces URL, used as it is; takes precedence over `OTEL_EXPORTER_OTLP_ENDPOINT`")
    ] = ""
    otel_service_name: Annotated[str, about("`service.name` of the exported spans")] = "kafka-log-gateway"

    @property
    def relay_transactional_id(self) -> str:
        """The outbox relay's transactional.id: shared by every instance of one deployment."""
        return self.outbox_relay_id or f"{self.kafka_client_id}.{self.transaction.topic}.outbox-relay"

    @property
    def checkpoint_topic(self) -> str:
        """Single-partition, compacted topic of the relay's checkpoints."""
        return f"{self.transaction.topic}.checkpoint"

    @property
    def spool_directory(self) -> str:
        return self.spool_dir or os.path.join(os.getcwd(), ".local", "spool")

    @property
    def tracing(self) -> bool:
        return bool(self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint)

    def tls_on(self, listener: str) -> bool:
        """Whether a listener (a role's, or ``otlp-grpc``) serves TLS."""
        return bool(self.tls_cert_file) and listener in _names(self.tls_listeners)

    def role_set(self) -> frozenset[str]:
        return _names(self.roles)

    def shipper_urls(self, shipper: str) -> list[str]:
        """The base URLs of a shipper that runs in another process."""
        configured = getattr(self, f"{shipper}_urls")
        urls = [url.strip() for url in configured.split(",") if url.strip()]
        if urls:
            return urls
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        return [f"http://{host}:{getattr(self, f'{shipper}_port')}"]

    def profiles(self) -> dict[str, ProfileSettings]:
        return {
            "application": self.application,
            "infrastructure": self.infrastructure,
            "transaction": self.transaction,
        }


@dataclass(frozen=True)
class Section:
    """A group of settings in the configuration reference: the fields from ``first`` to the next section's."""

    first: str
    title: str
    note: str = ""


SECTIONS = (
    Section("roles", "Processes and listeners"),
    Section(
        "kafka_bootstrap_servers",
        "Kafka",
        "The connection settings (bootstrap servers, security protocol, SASL, SSL) are those of every Kafka client "
        "of the gateway, and of `scripts/kafka-tool`.",
    ),
    Section(
        "application",
        "Producer profiles",
        "Each producer profile takes the same settings with its prefix, `APPLICATION_`, `INFRASTRUCTURE_` or "
        "`TRANSACTION_`. Transactions take no buffer and no dead-letter topic: the transaction column configures "
        "the outbox relay's transactional producer and the shipper's rate limit, and the outbox's own settings "
        "(`OUTBOX_MAX_PENDING`, `OUTBOX_QUEUE`...) bound what it accepts.",
    ),
    Section(
        "application_urls",
        "Shippers in other processes",
        "A gateway that does not host a shipper's role forwards that shipper's routes to it.",
    ),
    Section("collector_interval", "Host collector and consumer lag"),
    Section("max_request_bytes", "Request limits"),
    Section("database_url", "Transactional outbox"),
    Section("spool_dir", "Disk spool", "Used by the streams whose `_DURABILITY` is `disk`."),
    Section("breaker_failures", "Overload, readiness and shutdown"),
    Section("api_keys", "Authentication"),
    Section("syslog_port", "Syslog, the Fluentd forward protocol and Elasticsearch `_bulk`"),
    Section(
        "tls_cert_file",
        "TLS",
        "TLS (1.2 and up) on the listeners named in `TLS_LISTENERS` once a certificate and its key are set; with a "
        "client CA, mutual TLS: a client must present a certificate that CA signed.",
    ),
    Section(
        "otlp_grpc_port",
        "OTLP over gRPC",
        "Its calls run in `OTLP_GRPC_WORKERS` threads, at most `OTLP_GRPC_MAX_CONCURRENT_RPCS` under way at once.",
    ),
    Section(
        "log_level",
        "Logs and tracing",
        "OpenTelemetry spans of ingest requests are exported over OTLP/HTTP when either endpoint is set "
        "(the standard variables).",
    ),
)


# The declaration, read back: what the loader converts and checks, and what the reference shows.


@dataclass(frozen=True)
class Declared:
    """One setting as declared."""

    name: str
    base: Any  # int, float, bool, str, a Literal's values (tuple) or ProfileSettings
    meta: Meta  # the field's constraints, description and extra, merged
    default: Any  # for a profile field, the ProfileSettings class default (or None: the field has none)

    def variable(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}".upper()

    @property
    def description(self) -> str:
        return self.meta.description or ""

    @property
    def kind(self) -> str:
        if isinstance(self.base, tuple):
            return "one of"
        return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(self.base, "profile")

    @property
    def is_size(self) -> bool:
        """A number of bytes (shown in KiB, MiB... too)."""
        return self.name.endswith("bytes") or self.name == "batch_size"

    @property
    def bound(self) -> str:
        """The values the setting accepts, in words; empty when any value of its kind will do."""
        m = self.meta
        if m.extra and "bound" in m.extra:
            return str(m.extra["bound"])
        if isinstance(self.base, tuple):
            shown = ["empty" if value == "" else str(value) for value in self.base]
            return f"{', '.join(shown[:-1])} or {shown[-1]}"
        if self.base in (int, float):
            # Every number is bounded on both sides (tests/test_config.py checks it): NaN and infinity never pass.
            high = number_text(m.le, size=self.is_size)
            if m.gt is not None:
                return f"above {number_text(m.gt)}, at most {high}"
            return f"{number_text(m.ge)} to {high}"
        if self.base is str and m.min_length:
            return "not empty"
        if self.base is bool:
            return "true or false"
        return ""

    def expected(self) -> str:
        """What a refused value should have been, for the error message."""
        if isinstance(self.base, tuple):
            return f"one of {self.bound}"
        if self.base is bool:
            return "true or false (or 1/0, yes/no, on/off)"
        if self.base is str:
            return self.bound or "a string"
        kind = {int: "an integer", float: "a number"}[self.base]
        return f"{kind}, {self.bound}"


def number_text(value: float | None, *, size: bool = False) -> str:
    """A bound or a default as the reference shows it; a size in bytes also in KiB, MiB, GiB or TiB."""
    if value is None:
        return ""
    if not float(value).is_integer():
        return repr(float(value))
    shown = str(int(value))
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size and value >= scale and value % scale == 0:
            return f"{shown} ({int(value) // scale} {unit})"
    return shown


def _merged(metas: list[Meta]) -> Meta:
    keys = ("gt", "ge", "lt", "le", "pattern", "min_length", "max_length", "description", "extra")
    values: dict[str, Any] = {}
    for meta in metas:
        values.update({key: getattr(meta, key) for key in keys if getattr(meta, key) is not None})
    return Meta(**values)


def declared(cls: type) -> list[Declared]:
    """The settings of ``Settings`` or ``ProfileSettings``, in their declared order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: list[Declared] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        metas: list[Meta] = []
        while typing.get_origin(hint) is Annotated:
            base, *extras = typing.get_args(hint)
            metas = [*(e for e in extras if isinstance(e, Meta)), *metas]
            hint = base
        base = typing.get_args(hint) if typing.get_origin(hint) is Literal else hint
        default = None if f.default is dataclasses.MISSING else f.default
        out.append(Declared(f.name, base, _merged(metas), default))
    return out


SETTINGS = {d.name: d for d in declared(Settings)}
PROFILE_SETTINGS = {d.name: d for d in declared(ProfileSettings)}


# Loading.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _lexed(setting: Declared, raw: str) -> Any:
    """The environment's string in the form msgspec converts: booleans and case-insensitive enumerations spelled out."""
    text = raw.strip()
    if setting.base is bool:
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else raw
    if setting.base in (int, float):
        return text.replace("_", "")
    if isinstance(setting.base, tuple):
        return next((value for value in setting.base if value.lower() == text.lower()), raw)
    return raw


def _read(settings: Mapping[str, Declared], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    return {
        name: _lexed(setting, env[setting.variable(prefix)])
        for name, setting in settings.items()
        if setting.base is not ProfileSettings and setting.variable(prefix) in env
    }


_AT = re.compile(r" - at `\$\.([A-Za-z0-9_.]+)`$")


def _refused(error: msgspec.ValidationError, env: Mapping[str, str]) -> SettingsError:
    match = _AT.search(str(error))
    path = match.group(1).split(".") if match else []
    if len(path) == 2 and path[0] in PROFILE_DEFAULTS and path[1] in PROFILE_SETTINGS:
        setting, variable = PROFILE_SETTINGS[path[1]], PROFILE_SETTINGS[path[1]].variable(f"{path[0]}_")
    elif len(path) == 1 and path[0] in SETTINGS:
        setting, variable = SETTINGS[path[0]], SETTINGS[path[0]].variable()
    else:
        return SettingsError(f"the settings are refused: {error}")
    shown = repr(env[variable]) if variable in env else "its default"
    return SettingsError(f"{variable}={shown} is refused: expected {setting.expected()}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from environment variables over the documented defaults."""
    env = os.environ if env is None else env
    values = _read(SETTINGS, env, "")
    for name, default in PROFILE_DEFAULTS.items():
        # Each profile's own defaults, then what the environment says over them.
        values[name] = {**dataclasses.asdict(default()), **_read(PROFILE_SETTINGS, env, f"{name}_")}
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as error:
        raise _refused(error, env) from None
    own_syslog_tls = settings.syslog_tls_cert_file or settings.syslog_tls_key_file
    if settings.tls_cert_file and settings.tls_key_file and not own_syslog_tls:
        # Syslog over TLS serves the listeners' certificate unless it is given one of its own.
        settings = dataclasses.replace(
            settings, syslog_tls_cert_file=settings.tls_cert_file, syslog_tls_key_file=settings.tls_key_file
        )
    _validate(settings)
    return settings


def _names(listeners: str) -> frozenset[str]:
    return frozenset(name.strip() for name in listeners.split(",") if name.strip())


def _validate(settings: Settings) -> None:
    """The checks that involve more than one setting's bound; each setting's own is in its declaration."""
    if settings.transaction.disk:
        raise SettingsError(
            "TRANSACTION_DURABILITY=disk is refused: transactions are always durable, in the PostgreSQL outbox"
        )
    if settings.max_event_bytes > settings.max_request_bytes:
        raise SettingsError(
            f"MAX_EVENT_BYTES={settings.max_event_bytes} is refused: "
            f"MAX_EVENT_BYTES cannot exceed MAX_REQUEST_BYTES={settings.max_request_bytes}"
        )
    taken = {settings.infrastructure.topic, settings.transaction.topic, settings.checkpoint_topic}
    if settings.syslog_topic and (settings.syslog_topic in taken or settings.syslog_topic.endswith(".dlq")):
        raise SettingsError(
            f"SYSLOG_TOPIC={settings.syslog_topic!r} is refused: it must not be another stream's topic, "
            "the relay's checkpoints or a dead-letter topic"
        )
    if settings.topic_replication_factor == 0:
        raise SettingsError("TOPIC_REPLICATION_FACTOR=0 is refused: expected -1 (the broker's default) or 1 to 32767")
    unknown = settings.role_set() - set(ROLES)
    if unknown or not settings.role_set():
        raise SettingsError(f"ROLES must be a comma-separated subset of {', '.join(ROLES)}, not {settings.roles!r}")
    for shipper in ("application", "infrastructure", "transaction"):
        for url in settings.shipper_urls(shipper):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise SettingsError(f"{shipper.upper()}_URLS: {url!r} is not an http(s) base URL")
    if bool(settings.syslog_tls_cert_file) != bool(settings.syslog_tls_key_file):
        raise SettingsError("SYSLOG_TLS_CERT_FILE and SYSLOG_TLS_KEY_FILE are set together or not at all")
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE are set together or not at all")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise SettingsError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: mutual TLS is TLS first")
    unknown = _names(settings.tls_listeners) - set(TLS_LISTENERS)
    if unknown:
        raise SettingsError(
            f"TLS_LISTENERS must be a comma-separated subset of {', '.join(TLS_LISTENERS)}, not {settings.tls_listeners!r}"
        )
