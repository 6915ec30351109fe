"""Every knob of the gateway: one typed settings object, loaded from the environment.

Each field's default is the documented default (README, "Configuration"). Names of the
environment variables are the upper-cased field names; producer profile fields take the
profile's prefix (``APPLICATION_``, ``INFRASTRUCTURE_``, ``TRANSACTION_``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SECONDS = 1.0
MILLISECONDS = 1
KIB = 1024
MIB = 1024 * KIB


ROLES = ("gateway", "application", "infrastructure", "transaction")


class SettingsError(ValueError):
    """An environment variable holds a value the gateway cannot use."""


@dataclass(frozen=True)
class ProfileSettings:
    """One producer profile: its topic, librdkafka producer options and buffer bounds.

    The application and infrastructure profiles feed their producer through a bounded buffer and
    dead-letter what Kafka refuses for good. Transactions go through the outbox instead: the
    transaction profile's topic, librdkafka options and rate limit configure the relay's
    transactional producer and the shipper's routes, its buffer bounds only size that producer's
    librdkafka queue, and it has no dead-letter topic.
    """

    topic: str
    acks: str = "1"
    compression: str = "lz4"
    batch_size: int = 32 * KIB
    linger_ms: int = 10 * MILLISECONDS
    retries: int = 3
    retry_backoff_ms: int = 100 * MILLISECONDS
    retry_backoff_max_ms: int = 1000 * MILLISECONDS
    delivery_timeout_ms: int = 30_000 * MILLISECONDS
    idempotence: bool = False
    # Events per second accepted on the shipper's routes; 0 disables the limit.
    rate_limit: float = 50_000.0
    # The bound on events accepted (202) but not yet acknowledged by Kafka, in count and bytes
    # (for transactions, bounded by OUTBOX_MAX_PENDING instead, the relay producer's queue size).
    buffer_events: int = 100_000
    buffer_bytes: int = 64 * MIB
    # memory: 202 means taken into the buffer above; disk: fsynced into the stream's spool first
    # (app/spool/), which feeds Kafka with acks=all and an idempotent producer.
    durability: str = "memory"
    # The spool's bound (disk mode); past it, refuse (503) or drop-oldest.
    spool_bytes: int = 1024 * MIB
    spool_full: str = "refuse"

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
        retries=2_147_483_647,
        rate_limit=10_000.0,
        buffer_events=20_000,
    )


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration. Build it with :func:`load_settings`."""

    # Which listeners this process hosts: any of gateway, application, infrastructure, transaction.
    roles: str = "gateway,application,infrastructure,transaction"
    # Copies of the process sharing the listeners' ports (SO_REUSEPORT); set by --workers.
    workers: int = 1
    reuse_port: bool = False

    host: str = "127.0.0.1"
    gateway_port: int = 8080
    application_port: int = 8081
    infrastructure_port: int = 8082
    transaction_port: int = 8083

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_client_id: str = "kafka-log-gateway"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_ca_location: str = ""
    kafka_ssl_certificate_location: str = ""
    kafka_ssl_key_location: str = ""
    kafka_ssl_key_password: str = ""
    # How often librdkafka reports its statistics (queue, retries, broker round trips); 0 disables them.
    kafka_statistics_interval_ms: int = 5000 * MILLISECONDS
    topic_partitions: int = 3
    # -1 lets the broker choose (its default.replication.factor).
    topic_replication_factor: int = -1
    database_url: str = ""

    application: ProfileSettings = field(default_factory=_application_profile)
    infrastructure: ProfileSettings = field(default_factory=_infrastructure_profile)
    transaction: ProfileSettings = field(default_factory=_transaction_profile)

    # Where the gateway finds shippers that run in other processes: comma-separated base URLs.
    # Empty: the shipper's port on this host. Every address a host name resolves to is used.
    application_urls: str = ""
    infrastructure_urls: str = ""
    transaction_urls: str = ""
    upstream_timeout: float = 10 * SECONDS
    upstream_connect_timeout: float = 1 * SECONDS
    upstream_connections: int = 256

    # The host collector: one sample of every sensor per interval (0 disables it).
    collector_interval: float = 1 * SECONDS
    # Above 0: re-emit the latest samples at this many events/s (load testing).
    metrics_rate: float = 0.0
    # The host name on collected samples; empty: this machine's host name.
    metrics_host: str = ""

    # Consumer lag of the groups that read the gateway's topics, sampled every LAG_INTERVAL (0 turns it off):
    # the groups in LAG_GROUPS (comma-separated; empty: every group of the cluster), at most LAG_MAX_GROUPS
    # of them asked per round, each round within LAG_TIMEOUT.
    lag_interval: float = 15 * SECONDS
    lag_groups: str = ""
    lag_max_groups: int = 100
    lag_timeout: float = 5 * SECONDS

    # Where disk-mode streams keep their spools (one SQLite database each); empty: .local/spool
    # under the working directory. The spool does not start while the file system has less free
    # than SPOOL_MIN_FREE_BYTES, and refuses new events below it.
    spool_dir: str = ""
    spool_min_free_bytes: int = 64 * MIB

    # The Elasticsearch version the _bulk routes' handshake reports (GET / on the application listener).
    es_compat_version: str = "8.17.0"

    max_request_bytes: int = 10 * MIB
    max_decompressed_bytes: int = 32 * MIB
    max_batch_events: int = 10_000
    max_event_bytes: int = 1 * MIB

    outbox_max_pending: int = 1_000_000
    outbox_group_events: int = 1000
    outbox_queue: int = 10_000
    outbox_queue_bytes: int = 64 * MIB
    outbox_write_timeout: float = 5 * SECONDS
    outbox_relay_batch: int = 1000
    outbox_poll_interval: float = 0.5 * SECONDS
    outbox_kafka_timeout: float = 10 * SECONDS
    outbox_retention_hours: float = 168.0
    outbox_relay_id: str = ""

    breaker_failures: int = 10
    breaker_open_seconds: float = 5 * SECONDS
    api_keys: str = ""
    api_keys_file: str = ""

    ready_timeout: float = 2 * SECONDS
    graceful_timeout: float = 5 * SECONDS
    flush_timeout: float = 30 * SECONDS
    retry_after_seconds: int = 1
    log_level: str = "INFO"
    # json: one JSON object per log line, for log collectors; text: plain lines for a terminal.
    log_format: str = "json"

    # Syslog (RFC 5424 and 3164) over UDP and TCP on one port, and over TLS (RFC 5425) when a certificate
    # and its key are set; 0 turns a listener off. Hosted with the application role.
    syslog_port: int = 5514
    syslog_tls_port: int = 6514
    syslog_tls_cert_file: str = ""
    syslog_tls_key_file: str = ""
    syslog_max_message_bytes: int = 64 * KIB
    syslog_max_connections: int = 1024
    syslog_idle_timeout: float = 600 * SECONDS
    # The topic syslog records go to (created like the others, with its .dlq); empty: the application stream's topic.
    syslog_topic: str = ""
    # The Fluentd forward protocol over TCP (0 turns it off); with a shared key, its HELO/PING/PONG handshake.
    forward_port: int = 24224
    forward_shared_key: str = ""
    forward_max_message_bytes: int = 8 * MIB
    forward_max_connections: int = 1024
    forward_idle_timeout: float = 600 * SECONDS

    # TLS (1.2 and up) on the listeners named in TLS_LISTENERS once a certificate and its key are set; with a
    # client CA, mutual TLS: a client must present a certificate that CA signed. The certificate and key are
    # read again on SIGHUP and when their files change (looked at every TLS_RELOAD_INTERVAL seconds; 0: SIGHUP only).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_listeners: str = "gateway,application,infrastructure,transaction,otlp-grpc"
    tls_reload_interval: float = 5 * SECONDS
    # OTLP over gRPC (the logs and metrics services' Export), hosted with the gateway role; 0 turns it off.
    # Its calls run in OTLP_GRPC_WORKERS threads, at most OTLP_GRPC_MAX_CONCURRENT_RPCS under way at once.
    otlp_grpc_port: int = 4317
    otlp_grpc_workers: int = 8
    otlp_grpc_max_concurrent_rpcs: int = 256

    # OpenTelemetry spans of ingest requests, exported over OTLP/HTTP when either endpoint is set
    # (the standard variables; the traces one is used as it is, the other gets /v1/traces appended).
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""
    otel_service_name: str = "kafka-log-gateway"

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
        return frozenset(role.strip() for role in self.roles.split(",") if role.strip())

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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw


def _load_fields(cls: Any, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.type == "ProfileSettings":
            continue
        name = f"{prefix}{f.name}".upper()
        if name in env:
            values[f.name] = _convert(name, env[name], f.type)
    return values


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from environment variables over the documented defaults."""
    env = os.environ if env is None else env
    defaults = Settings()
    top = _load_fields(Settings, env, "")
    for name, profile in defaults.profiles().items():
        overrides = _load_fields(ProfileSettings, env, f"{name}_")
        top[name] = dataclasses.replace(profile, **overrides)
    settings = dataclasses.replace(defaults, **top)
    if settings.tls_cert_file and settings.tls_key_file and not (settings.syslog_tls_cert_file or settings.syslog_tls_key_file):
        # Syslog over TLS serves the listeners' certificate unless it is given one of its own.
        settings = dataclasses.replace(
            settings, syslog_tls_cert_file=settings.tls_cert_file, syslog_tls_key_file=settings.tls_key_file
        )
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    for name, profile in settings.profiles().items():
        if profile.acks not in {"0", "1", "all", "-1"}:
            raise SettingsError(f"{name.upper()}_ACKS must be 0, 1 or all, not {profile.acks!r}")
        if profile.buffer_events <= 0 or profile.buffer_bytes <= 0:
            raise SettingsError(f"{name.upper()}_BUFFER_EVENTS and _BUFFER_BYTES must be positive")
        if profile.compression not in {"none", "gzip", "snappy", "lz4", "zstd"}:
            raise SettingsError(f"{name.upper()}_COMPRESSION {profile.compression!r} is unknown")
        if profile.durability not in {"memory", "disk"}:
            raise SettingsError(f"{name.upper()}_DURABILITY must be memory or disk, not {profile.durability!r}")
        if profile.spool_full not in {"refuse", "drop-oldest"}:
            raise SettingsError(f"{name.upper()}_SPOOL_FULL must be refuse or drop-oldest, not {profile.spool_full!r}")
        if profile.spool_bytes <= 0:
            raise SettingsError(f"{name.upper()}_SPOOL_BYTES must be positive")
        if not (math.isfinite(profile.rate_limit) and profile.rate_limit >= 0):
            raise SettingsError(f"{name.upper()}_RATE_LIMIT must be a non-negative number, not {profile.rate_limit!r}")
    if settings.transaction.disk:
        raise SettingsError("TRANSACTION_DURABILITY: transactions are always durable, in the PostgreSQL outbox")
    if not re.fullmatch(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", settings.es_compat_version):
        raise SettingsError(f"ES_COMPAT_VERSION must be a version such as 8.17.0, not {settings.es_compat_version!r}")
    if settings.max_event_bytes > settings.max_request_bytes:
        raise SettingsError("MAX_EVENT_BYTES cannot exceed MAX_REQUEST_BYTES")
    unknown = settings.role_set() - set(ROLES)
    if unknown or not settings.role_set():
        raise SettingsError(f"ROLES must be a comma-separated subset of {', '.join(ROLES)}, not {settings.roles!r}")
    if settings.workers < 1:
        raise SettingsError("WORKERS must be at least 1")
    for shipper in ("application", "infrastructure", "transaction"):
        for url in settings.shipper_urls(shipper):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise SettingsError(f"{shipper.upper()}_URLS: {url!r} is not an http(s) base URL")
    if settings.kafka_security_protocol.upper() not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
        raise SettingsError("KAFKA_SECURITY_PROTOCOL must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_mechanism.upper() not in {
        "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512",
    }:
        raise SettingsError("KAFKA_SASL_MECHANISM must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    if settings.breaker_failures < 1:
        raise SettingsError("BREAKER_FAILURES must be at least 1")
    if settings.kafka_statistics_interval_ms < 0:
        raise SettingsError("KAFKA_STATISTICS_INTERVAL_MS cannot be negative")
    if settings.log_format not in {"json", "text"}:
        raise SettingsError(f"LOG_FORMAT must be json or text, not {settings.log_format!r}")
    if settings.topic_partitions < 1:
        raise SettingsError("TOPIC_PARTITIONS must be at least 1")
    if settings.lag_max_groups < 1:
        raise SettingsError("LAG_MAX_GROUPS must be at least 1")
    # Every wait has a deadline: none of these may be infinite or NaN, and the timeouts not zero.
    for name in (*_POSITIVE, *_NON_NEGATIVE):
        value, positive = getattr(settings, name), name in _POSITIVE
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            least = "positive" if positive else "non-negative"
            raise SettingsError(f"{name.upper()} must be a {least} number, not {value!r}")
    _validate_sockets(settings)
    if settings.ready_timeout > 300:  # librdkafka's socket.timeout.ms stops at 300,000
        raise SettingsError("READY_TIMEOUT cannot exceed 300 seconds")


def _validate_sockets(settings: Settings) -> None:
    for name in ("syslog_port", "syslog_tls_port", "forward_port"):
        if not 0 <= getattr(settings, name) <= 65535:
            raise SettingsError(f"{name.upper()} must be a port number (0 turns the listener off)")
    for name in ("syslog_max_message_bytes", "syslog_max_connections", "forward_max_message_bytes", "forward_max_connections"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name.upper()} must be at least 1")
    if bool(settings.syslog_tls_cert_file) != bool(settings.syslog_tls_key_file):
        raise SettingsError("SYSLOG_TLS_CERT_FILE and SYSLOG_TLS_KEY_FILE are set together or not at all")
    _validate_tls(settings)


TLS_LISTENERS = (*ROLES, "otlp-grpc")


def _names(listeners: str) -> frozenset[str]:
    return frozenset(name.strip() for name in listeners.split(",") if name.strip())


def _validate_tls(settings: Settings) -> None:
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE are set together or not at all")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise SettingsError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: mutual TLS is TLS first")
    unknown = _names(settings.tls_listeners) - set(TLS_LISTENERS)
    if unknown:
        raise SettingsError(
            f"TLS_LISTENERS must be a comma-separated subset of {', '.join(TLS_LISTENERS)}, not {settings.tls_listeners!r}"
        )
    if not 0 <= settings.otlp_grpc_port <= 65535:
        raise SettingsError("OTLP_GRPC_PORT must be a port number (0 turns the listener off)")
    for name in ("otlp_grpc_workers", "otlp_grpc_max_concurrent_rpcs"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name.upper()} must be at least 1")


_POSITIVE = (
    "upstream_timeout", "upstream_connect_timeout", "outbox_write_timeout", "outbox_poll_interval",
    "outbox_kafka_timeout", "breaker_open_seconds", "ready_timeout", "syslog_idle_timeout", "forward_idle_timeout",
    "lag_timeout",
)
_NON_NEGATIVE = (
    "graceful_timeout", "flush_timeout", "collector_interval", "metrics_rate", "outbox_retention_hours", "lag_interval",
    "tls_reload_interval",
)
