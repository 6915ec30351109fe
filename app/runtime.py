"""The process: one nursery with the producer profiles, the listeners and their helpers.

The roles (``ROLES``, ``--role``) decide which listeners and profiles a process hosts; a
gateway without a shipper forwards that shipper's routes to its remote instances.

Start-up: the topic and schema setup and the remote shippers' resolvers (in the background,
so the process comes up and reports not-ready while Kafka or PostgreSQL is away), the producer
tasks and the host collector, then one hypercorn listener per role. Shutdown (SIGTERM, SIGINT or :meth:`Runtime.shutdown`): the
listeners stop accepting and finish their requests within the graceful timeout; then every
profile drains its buffer and flushes its producer within the flush timeout; exit 0.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import hypercorn.config
import trio

from app.admission import Admission
from app.auth import ApiKeys, load_api_keys
from app.breaker import CircuitBreaker
from app.config import ROLES, ProfileSettings, Settings
from app.core import NoTracer, Tracer
from app.db.database import Database
from app.gateway.upstream import Upstream
from app.http.actuator import component
from app.http.listener import ReadyCheck, ReadyNotice, create_listener_app, watch_readiness
from app.http.pipeline import BodyLimits, Entry, Forward, Ingest, Lookup, Pipeline
from app.http.routes import Configured, Route, table
from app.http.server import serve as serve_http
from app.kafka.admin import TopicSpec, maintain_topics
from app.kafka.connection import connection_config
from app.kafka.lag_process import lag_process
from app.kafka.producer import KafkaProducer, producer_config
from app.otlp_grpc import serve_otlp_grpc
from app.observability.consumer_lag import watch_consumer_lag
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog
from app.outbox.relay import Relay
from app.outbox.writer import OutboxWriter
from app.profile import ProducerProfile
from app.shippers import application, infrastructure, transaction
from app.shippers.collector import Collector
from app.sockets import build_socket_listeners
from app.spool.spool import Spool
from app.spool.store import Store
from app.status import page as status_page
from app.streams import Stream
from app.tls import ServerTLS, load_syslog_tls, load_tls, watch_tls

log = logging.getLogger(__name__)

LISTENERS = ROLES
SHIPPERS = ("application", "infrastructure", "transaction")
# Each shipper's route table; a listener serves the tables of the shippers it stands for.
ROUTES: dict[str, tuple[Route, ...]] = {
    "application": application.ROUTES,
    "infrastructure": infrastructure.ROUTES,
    "transaction": transaction.ROUTES,
}


def listener_routes(listener: str) -> tuple[Route, ...]:
    """The route table of a listener: its shipper's, or every shipper's for the gateway."""
    if listener == "gateway":
        return table(*((route for route in ROUTES[name] if route.gateway) for name in SHIPPERS))
    return table(ROUTES[listener])


@dataclass
class Runtime:
    """What a started gateway hands back: where it listens, and how to stop it."""

    addresses: dict[str, list[str]]
    settings: Settings
    profiles: dict[str, ProducerProfile]
    metrics: Metrics
    _shutdown: trio.Event = field(repr=False)
    spools: dict[str, Spool] = field(default_factory=dict)
    # The listeners' TLS (None while TLS_CERT_FILE is unset): ``tls.reload()`` is what SIGHUP does.
    tls: ServerTLS | None = None

    def shutdown(self) -> None:
        """Begin the graceful shutdown (same as SIGTERM)."""
        self._shutdown.set()

    def url(self, listener: str) -> str:
        return self.addresses[listener][0]


# How long a request's body may take to arrive once its headers have.
BODY_TIMEOUT_SECONDS = 30.0

# The profiles fed through a bounded channel; transactions go through the outbox instead.
CHANNEL_PROFILES = ("application", "infrastructure")
# The profile of syslog records when SYSLOG_TOPIC gives them a topic of their own: hosted with the
# application role, its options are the application profile's.
SYSLOG = "syslog"


def syslog_apart(settings: Settings) -> bool:
    """Whether syslog records go to a topic other than the application stream's."""
    return bool(settings.syslog_topic) and settings.syslog_topic != settings.application.topic


def profile_settings(settings: Settings, name: str) -> ProfileSettings:
    """A producer profile's settings: a shipper's, or syslog's (the application profile's, on SYSLOG_TOPIC)."""
    if name == SYSLOG:
        return dataclasses.replace(settings.application, topic=settings.syslog_topic)
    return settings.profiles()[name]


def profile_producer_config(settings: Settings, name: str) -> dict[str, Any]:
    profile = profile_settings(settings, name)
    if profile.disk:
        # acks=1 can lose an acknowledged record in a leader change, which would defeat the spool;
        # idempotence keeps each key's order through retries.
        profile = dataclasses.replace(profile, acks="all", idempotence=True)
    return producer_config(
        profile,
        connection=connection_config(settings),
        client_id=f"{settings.kafka_client_id}-{name}",
        max_message_bytes=max(1_000_000, settings.max_event_bytes + 64 * 1024),
        statistics_interval_ms=settings.kafka_statistics_interval_ms,
    )


def build_profiles(settings: Settings, metrics: Metrics) -> dict[str, ProducerProfile]:
    """The channel profiles of the shippers this process hosts."""

    def profile(name: str) -> ProducerProfile:
        config = profile_producer_config(settings, name)
        options = profile_settings(settings, name)
        # A disk-mode stream follows every record (the spool deletes what Kafka acknowledged): no
        # record goes uncounted there. In memory mode, those nobody follows are counted, not reported.
        counted = None if options.disk else options.topic
        return ProducerProfile(
            name,
            options,
            KafkaProducer(config, counted_topic=counted),
            metrics,
            flush_timeout=settings.flush_timeout,
            breaker=CircuitBreaker(
                failure_threshold=settings.breaker_failures,
                open_seconds=settings.breaker_open_seconds,
                clock=trio.current_time,
            ),
            recreate=lambda: KafkaProducer(config, counted_topic=counted),
            probe_timeout=settings.ready_timeout,
            spooled=options.disk,
        )

    names = [name for name in CHANNEL_PROFILES if name in settings.role_set()]
    if "application" in names and syslog_apart(settings):
        # Its own buffer, breaker, dead-letter topic and (in disk mode) spool.
        names.append(SYSLOG)
    return {name: profile(name) for name in names}


def build_spools(settings: Settings, metrics: Metrics, profiles: dict[str, ProducerProfile]) -> dict[str, Spool]:
    """The spools of the disk-mode streams this process hosts."""
    spools: dict[str, Spool] = {}
    for name, profile in profiles.items():
        options = profile_settings(settings, name)
        if options.disk:
            spools[name] = Spool(
                Store(Path(settings.spool_directory), name),
                profile,
                metrics,
                max_bytes=options.spool_bytes,
                min_free_bytes=settings.spool_min_free_bytes,
                drop_oldest=options.spool_full == "drop-oldest",
                retry_after_seconds=settings.retry_after_seconds,
                flush_timeout=settings.flush_timeout,
                memory_copy_events=options.buffer_events,
            )
    return spools


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics created at start-up: every stream's, the channel profiles' dead-letter topics, the relay's checkpoints.

    Transactions have no dead-letter topic: the relay publishes a row in a Kafka transaction or not at all.
    """
    partitions = settings.topic_partitions
    profiles = settings.profiles()
    specs = [TopicSpec(profile.topic, partitions) for profile in profiles.values()]
    specs += [TopicSpec(profiles[name].dead_letter_topic, partitions) for name in CHANNEL_PROFILES]
    if syslog_apart(settings):
        syslog = profile_settings(settings, SYSLOG)
        specs += [TopicSpec(syslog.topic, partitions), TopicSpec(syslog.dead_letter_topic, partitions)]
    specs.append(TopicSpec(settings.checkpoint_topic, 1, {"cleanup.policy": "compact"}))
    return specs


@dataclass
class Outbox:
    database: Database
    writer: OutboxWriter
    relay: Relay


def build_outbox(settings: Settings, metrics: Metrics) -> Outbox | None:
    if not settings.database_url or "transaction" not in settings.role_set():
        return None
    database = Database(settings.database_url, timeout=settings.ready_timeout)
    backlog = Backlog(settings.outbox_max_pending)
    writer = OutboxWriter(
        settings.database_url,
        backlog,
        metrics,
        schema_ready=database.schema_ready,
        max_group_events=settings.outbox_group_events,
        max_queue=settings.outbox_queue,
        max_queue_bytes=settings.outbox_queue_bytes,
        write_timeout=settings.outbox_write_timeout,
    )
    relay = Relay(
        settings.database_url,
        profile_producer_config(settings, "transaction"),
        backlog,
        metrics,
        schema_ready=database.schema_ready,
        transactional_id=settings.relay_transactional_id,
        checkpoint_topic=settings.checkpoint_topic,
        batch_size=settings.outbox_relay_batch,
        poll_interval=settings.outbox_poll_interval,
        kafka_timeout=settings.outbox_kafka_timeout,
        retention=dt.timedelta(hours=settings.outbox_retention_hours),
    )
    return Outbox(database, writer, relay)


def build_upstreams(settings: Settings, metrics: Metrics) -> dict[str, Upstream]:
    """The shippers a gateway in this process reaches over HTTP: those it does not host."""
    roles = settings.role_set()
    if "gateway" not in roles:
        return {}
    return {
        name: Upstream(
            name,
            settings.shipper_urls(name),
            metrics,
            timeout=settings.upstream_timeout,
            connect_timeout=settings.upstream_connect_timeout,
            max_connections=settings.upstream_connections,
        )
        for name in SHIPPERS
        if name not in roles
    }


def build_tracing(settings: Settings) -> Tracer:
    """The span exporter when an OTLP endpoint is set; otherwise the SDK is not even imported."""
    if not settings.tracing:
        return NoTracer()
    from app.observability.otel import Tracing

    return Tracing(settings)


@dataclass
class Listener:
    """One listener this process hosts: its port, the Quart app of its other routes, and the
    pipeline in front of it (what hypercorn serves)."""

    port: int
    app: Any
    pipeline: Pipeline
    # A shipper's listener: its stream and admission, which its socket listeners share (syslog, forward).
    stream: Stream | None = None
    admission: Admission | None = None
    # The application listener's syslog records, when SYSLOG_TOPIC gives them a stream of their own.
    syslog_stream: Stream | None = None


def build_listeners(
    settings: Settings,
    metrics: Metrics,
    profiles: dict[str, ProducerProfile],
    outbox: Outbox | None,
    upstreams: dict[str, Upstream],
    api_keys: ApiKeys | None,
    tracer: Tracer,
    spools: dict[str, Spool] | None = None,
) -> dict[str, Listener]:
    """Every listener this process hosts, its route table bound to the streams (or the upstreams)."""
    roles = settings.role_set()

    def probe(name: str) -> ReadyCheck:
        return component("kafka", lambda: profiles[name].probe(settings.ready_timeout))

    async def syslog_probe() -> str | None:
        reason = await profiles[SYSLOG].probe(settings.ready_timeout)
        return None if reason is None else f"syslog: {reason}"

    async def no_database() -> str:
        return "DATABASE_URL is not set: transactions need the PostgreSQL outbox"

    streams: dict[str, Stream] = {}
    checks: dict[str, list[ReadyCheck]] = {}
    spools = spools or {}
    syslog_stream: Stream | None = None
    if "application" in roles:
        streams["application"] = application.stream(settings, profiles["application"], spools.get("application"))
        checks["application"] = [probe("application")]
        if SYSLOG in profiles:
            syslog_stream = application.stream(settings, profiles[SYSLOG], spools.get(SYSLOG))
    if "infrastructure" in roles:
        streams["infrastructure"] = infrastructure.stream(settings, profiles["infrastructure"], spools.get("infrastructure"))
        checks["infrastructure"] = [probe("infrastructure")]
    notices: dict[str, list[ReadyNotice]] = {}
    for name, spool in spools.items():
        # A disk-mode stream takes events while Kafka is away: its readiness is its spool's. Damaged
        # data its spool set aside is on /ready too, without making it unready (Spool.notice says why).
        checks[name] = [spool.ready]
        notices.setdefault("application" if name == SYSLOG else name, []).append(spool.notice)  # syslog: on 8081
    if syslog_stream is not None:
        # The application listener takes syslog records too: it is ready when both streams are.
        checks["application"] += checks.pop(SYSLOG, [component("kafka", syslog_probe)])
    if "transaction" in roles:
        streams["transaction"] = transaction.stream(settings, outbox.writer if outbox else None)
        # Transactions are accepted into the outbox while Kafka is away: readiness is PostgreSQL's.
        checks["transaction"] = [component("db", outbox.database.probe if outbox else no_database)]
    # One admission per stream, shared by its shipper's listener and the gateway's.
    admissions = {
        name: Admission(
            name,
            metrics,
            rate_limit=settings.profiles()[name].rate_limit,
            burst=settings.max_batch_events,
            api_keys=api_keys,
            clock=trio.current_time,
        )
        for name in streams
    }
    limits = BodyLimits(
        max_request_bytes=settings.max_request_bytes,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        body_timeout=BODY_TIMEOUT_SECONDS,
        max_events=settings.max_batch_events,
    )

    def bind(route: Route) -> Entry:
        if route.stream not in streams:
            return Forward(route, upstreams[route.stream])
        if route.dialect is not None:
            dialect = route.dialect.configured(settings) if isinstance(route.dialect, Configured) else route.dialect
            return Ingest(route, dialect, streams[route.stream], admissions[route.stream])
        assert route.view is not None
        return Lookup(route, route.view, streams[route.stream], admissions[route.stream])

    def listener(name: str, ready: list[ReadyCheck], port: int) -> Listener:
        routes = listener_routes(name)
        app = create_listener_app(
            name, metrics, ready, routes, max_request_bytes=settings.max_request_bytes,
            notices=notices.get("application" if name == "gateway" else name, []),
        )
        if name == "gateway":
            status_page.register(app, metrics, {route.path: route.stream for route in routes})
        pipeline = Pipeline(name, [bind(route) for route in routes], app, metrics, tracer, limits)
        return Listener(
            port, app, pipeline, streams.get(name), admissions.get(name), syslog_stream if name == "application" else None
        )

    listeners = {name: listener(name, checks[name], getattr(settings, f"{name}_port")) for name in streams}
    if "gateway" in roles:
        # Ready when its main stream, application logs, can be taken: a load balancer that drops
        # the gateway drops every stream, so one shipper's trouble must not decide it alone.
        gateway_checks: list[ReadyCheck] = (
            checks["application"]
            if "application" in streams
            else [component("applicationShipper", partial(upstreams["application"].ready, settings.ready_timeout))]
        )
        listeners["gateway"] = listener("gateway", gateway_checks, settings.gateway_port)
    return listeners


def hypercorn_config(settings: Settings, port: int) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    if settings.reuse_port:
        # Several processes serve one port; the kernel spreads connections across them.
        sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((settings.host, port))
        config.bind = [f"fd://{sock.detach()}"]
    else:
        config.bind = [f"{settings.host}:{port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.backlog = 1024
    config.keep_alive_timeout = 75
    config.include_server_header = False
    return config


async def watch_signals(
    shutdown: trio.Event,
    reload: Callable[[], None] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGTERM and SIGINT shut down gracefully (a second one at once); SIGHUP calls ``reload``, when given."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, *([signal.SIGHUP] if reload else [])) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP and reload is not None:
                log.info("SIGHUP: reloading the TLS certificates")
                reload()
                continue
            if shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                raise KeyboardInterrupt
            log.info("%s: shutting down gracefully", signal.Signals(signum).name)
            shutdown.set()


def _request_reload(requests: trio.MemorySendChannel[None]) -> None:
    try:
        requests.send_nowait(None)
    except trio.WouldBlock:  # a reload is already asked for
        pass


async def run(
    settings: Settings,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until shut down. Reports a :class:`Runtime` once every listener is up."""
    api_keys = load_api_keys(settings, trio.current_time)  # a bad key file stops start-up here
    tls = load_tls(settings)  # and so does a certificate or key that cannot serve
    syslog_tls = load_syslog_tls(settings)
    reloaded = [server for server in (tls, syslog_tls) if server is not None]
    roles = settings.role_set()
    metrics = Metrics()
    profiles = build_profiles(settings, metrics)
    spools = build_spools(settings, metrics, profiles)
    outbox = build_outbox(settings, metrics)
    upstreams = build_upstreams(settings, metrics)
    tracer = build_tracing(settings)
    shutdown = trio.Event()

    async with trio.open_nursery() as background:
        reload_requests, reloads = trio.open_memory_channel[None](1)
        if handle_signals:
            await background.start(
                watch_signals, shutdown, partial(_request_reload, reload_requests) if reloaded else None
            )
        if reloaded:
            # After the signal watcher: files changed before SIGHUP could be caught are loaded at its start.
            await background.start(watch_tls, reloaded, reloads, settings.tls_reload_interval)
        if roles & set(SHIPPERS):
            await background.start(
                partial(
                    maintain_topics,
                    connection_config(settings),
                    topic_specs(settings),
                    replication_factor=settings.topic_replication_factor,
                    timeout=max(settings.ready_timeout, 5.0),
                )
            )
        if outbox is not None:
            await background.start(outbox.database.run)
            await background.start(outbox.writer.run)
            await background.start(outbox.relay.run)
        for upstream in upstreams.values():
            await background.start(upstream.run)
        if settings.lag_interval > 0:
            await background.start(
                partial(watch_consumer_lag, lag_process(settings), metrics.consumer_lag, interval=settings.lag_interval)
            )

        async with trio.open_nursery() as producers:
            for profile in profiles.values():
                await producers.start(profile.run)
            for spool in spools.values():
                # Opens (and salvages) the spool; what an earlier run left in it is delivered from now on.
                await producers.start(spool.run)
            if "infrastructure" in profiles and settings.collector_interval > 0:
                collector = Collector(
                    profiles["infrastructure"],
                    metrics,
                    interval=settings.collector_interval,
                    host=settings.metrics_host,
                    rate=settings.metrics_rate,
                )
                await background.start(collector.run)
            listeners = build_listeners(settings, metrics, profiles, outbox, upstreams, api_keys, tracer, spools)
            await background.start(watch_readiness, {name: served.app for name, served in listeners.items()}, metrics)
            async with trio.open_nursery() as serving:
                addresses: dict[str, list[str]] = {}
                for name in LISTENERS:
                    if name not in listeners:
                        continue
                    served = listeners[name]
                    addresses[name] = await serving.start(
                        partial(
                            serve_http,
                            served.pipeline,
                            hypercorn_config(settings, served.port),
                            tls=tls if settings.tls_on(name) else None,
                            shutdown_trigger=shutdown.wait,
                        )
                    )
                    log.info("%s listening on %s", name, ", ".join(addresses[name]))
                if "gateway" in listeners and settings.otlp_grpc_port:
                    addresses["otlp-grpc"] = await serving.start(
                        partial(
                            serve_otlp_grpc, settings, listeners["gateway"].pipeline, metrics, tracer,
                            tls if settings.tls_on("otlp-grpc") else None, shutdown.wait,
                        )
                    )
                    log.info("otlp-grpc listening on %s", ", ".join(addresses["otlp-grpc"]))
                application_listener = listeners.get("application")
                if application_listener is not None and application_listener.stream is not None:
                    assert application_listener.admission is not None
                    for socket_listener in build_socket_listeners(
                        settings, metrics, application_listener.stream, application_listener.admission, tracer,
                        syslog_stream=application_listener.syslog_stream, syslog_tls=syslog_tls,
                    ):
                        bound = await serving.start(socket_listener.run, shutdown.wait)
                        for name, bound_addresses in bound.items():
                            log.info("%s listening on %s", name, ", ".join(bound_addresses))
                        addresses.update(bound)
                task_status.started(Runtime(addresses, settings, profiles, metrics, shutdown, spools, tls))
            log.info("listeners stopped; draining producer buffers")
            for spool in spools.values():
                spool.close()
            for profile in profiles.values():
                profile.close()
        background.cancel_scope.cancel()
    if settings.tracing:
        # The spans of the drained buffers go out too, within a bound: a collector away cannot hold the exit.
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            await trio.to_thread.run_sync(tracer.shutdown, abandon_on_cancel=True)
    log.info("stopped")
