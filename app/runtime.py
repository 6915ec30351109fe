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

import datetime as dt
import logging
import signal
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from dataclasses import dataclass, field
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio
from quart_trio import QuartTrio

from app.admission import Admission
from app.auth import ApiKeys, load_api_keys
from app.breaker import CircuitBreaker
from app.config import ROLES, Settings
from app.db.database import Database
from app.gateway.app import Shipper, route_in_process, route_remote
from app.gateway.upstream import Upstream
from app.http.fastlane import FAST_ROUTES_KEY, FastLane
from app.http.listener import ReadyCheck, create_listener_app, watch_readiness
from app.kafka.admin import TopicSpec, maintain_topics
from app.kafka.connection import connection_config
from app.kafka.producer import KafkaProducer, producer_config
from app.observability.metrics import Metrics
from app.outbox.relay import Relay
from app.outbox.writer import OutboxWriter
from app.profile import ProducerProfile
from app.shippers import application, infrastructure, transaction
from app.shippers.application import ApplicationShipper
from app.shippers.collector import Collector
from app.shippers.infrastructure import InfrastructureShipper
from app.shippers.ingest import Submitter
from app.shippers.transaction import TransactionShipper
from app.status import page as status_page

if TYPE_CHECKING:
    from app.observability.otel import Tracing

log = logging.getLogger(__name__)

LISTENERS = ROLES
SHIPPERS = ("application", "infrastructure", "transaction")
REMOTE_ROUTES = {
    "application": application.ROUTES,
    "infrastructure": infrastructure.ROUTES,
    "transaction": transaction.ROUTES,
}
OPENAPI_PATHS = {
    "application": application.openapi_paths,
    "infrastructure": infrastructure.openapi_paths,
    "transaction": transaction.openapi_paths,
}


@dataclass
class Runtime:
    """What a started gateway hands back: where it listens, and how to stop it."""

    addresses: dict[str, list[str]]
    settings: Settings
    profiles: dict[str, ProducerProfile]
    metrics: Metrics
    _shutdown: trio.Event = field(repr=False)

    def shutdown(self) -> None:
        """Begin the graceful shutdown (same as SIGTERM)."""
        self._shutdown.set()

    def url(self, listener: str) -> str:
        return self.addresses[listener][0]


# The profiles fed through a bounded channel; transactions go through the outbox instead.
CHANNEL_PROFILES = ("application", "infrastructure")


def profile_producer_config(settings: Settings, name: str) -> dict[str, Any]:
    return producer_config(
        settings.profiles()[name],
        connection=connection_config(settings),
        client_id=f"{settings.kafka_client_id}-{name}",
        max_message_bytes=max(1_000_000, settings.max_event_bytes + 64 * 1024),
        statistics_interval_ms=settings.kafka_statistics_interval_ms,
    )


def build_profiles(settings: Settings, metrics: Metrics) -> dict[str, ProducerProfile]:
    """The channel profiles of the shippers this process hosts."""

    def profile(name: str) -> ProducerProfile:
        config = profile_producer_config(settings, name)
        return ProducerProfile(
            name,
            settings.profiles()[name],
            KafkaProducer(config),
            metrics,
            flush_timeout=settings.flush_timeout,
            breaker=CircuitBreaker(
                failure_threshold=settings.breaker_failures,
                open_seconds=settings.breaker_open_seconds,
                clock=trio.current_time,
            ),
            recreate=lambda: KafkaProducer(config),
            probe_timeout=settings.ready_timeout,
        )

    return {name: profile(name) for name in CHANNEL_PROFILES if name in settings.role_set()}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    partitions = settings.topic_partitions
    specs = [
        TopicSpec(topic, partitions)
        for profile in settings.profiles().values()
        for topic in (profile.topic, profile.dead_letter_topic)
    ]
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
    relay: Relay | None = None

    def wake_relay() -> None:
        if relay is not None:
            relay.wake()

    writer = OutboxWriter(
        settings.database_url,
        metrics,
        max_group_events=settings.outbox_group_events,
        max_queue=settings.outbox_queue,
        max_queue_bytes=settings.outbox_queue_bytes,
        max_pending=settings.outbox_max_pending,
        write_timeout=settings.outbox_write_timeout,
        on_commit=wake_relay,
    )
    relay = Relay(
        settings.database_url,
        profile_producer_config(settings, "transaction"),
        writer,
        metrics,
        transactional_id=settings.relay_transactional_id,
        checkpoint_topic=settings.checkpoint_topic,
        batch_size=settings.outbox_relay_batch,
        poll_interval=settings.outbox_poll_interval,
        kafka_timeout=settings.outbox_kafka_timeout,
        retention=dt.timedelta(hours=settings.outbox_retention_hours),
    )
    return Outbox(Database(settings.database_url, timeout=settings.ready_timeout), writer, relay)


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


def build_tracing(settings: Settings) -> Tracing | None:
    """The span exporter when an OTLP endpoint is set; otherwise the SDK is not even imported."""
    if not settings.tracing:
        return None
    from app.observability.otel import Tracing

    return Tracing(settings)


def build_apps(
    settings: Settings,
    metrics: Metrics,
    profiles: dict[str, ProducerProfile],
    outbox: Outbox | None,
    upstreams: dict[str, Upstream],
    api_keys: ApiKeys | None,
    tracing: Tracing | None = None,
) -> dict[str, tuple[QuartTrio, int]]:
    """The Quart app and port of each listener this process hosts."""
    roles = settings.role_set()

    def probe(name: str) -> ReadyCheck:
        return lambda: profiles[name].probe(settings.ready_timeout)

    def listener(name: str, checks: Sequence[ReadyCheck]) -> QuartTrio:
        return create_listener_app(
            name, metrics, checks, max_request_bytes=settings.max_request_bytes, tracing=tracing
        )

    def admission(name: str) -> Admission:
        return Admission(
            name,
            metrics,
            rate_limit=settings.profiles()[name].rate_limit,
            burst=settings.max_batch_events,
            api_keys=api_keys,
            clock=trio.current_time,
        )

    def submitter(name: str) -> Submitter:
        return Submitter(
            profiles[name],
            metrics,
            retry_after_seconds=settings.retry_after_seconds,
            max_event_bytes=settings.max_event_bytes,
        )

    async def no_database() -> str:
        return "DATABASE_URL is not set: transactions need the PostgreSQL outbox"

    shippers: dict[str, Shipper] = {}
    checks: dict[str, list[ReadyCheck]] = {}
    if "application" in roles:
        shippers["application"] = ApplicationShipper(settings, submitter("application"), admission("application"))
        checks["application"] = [probe("application")]
    if "infrastructure" in roles:
        shippers["infrastructure"] = InfrastructureShipper(
            settings, submitter("infrastructure"), admission("infrastructure")
        )
        checks["infrastructure"] = [probe("infrastructure")]
    if "transaction" in roles:
        shippers["transaction"] = TransactionShipper(settings, outbox.writer if outbox else None, admission("transaction"))
        # Transactions are accepted into the outbox while Kafka is away: readiness is PostgreSQL's.
        checks["transaction"] = [outbox.database.probe if outbox else no_database]

    apps: dict[str, tuple[QuartTrio, int]] = {}
    for name, shipper in shippers.items():
        app = listener(name, checks[name])
        shipper.register(app)
        apps[name] = (app, getattr(settings, f"{name}_port"))
    if "gateway" in roles:
        # Ready when its main stream, application logs, can be taken: a load balancer that drops
        # the gateway drops every stream, so one shipper's trouble must not decide it alone.
        gateway_checks = (
            checks["application"]
            if "application" in shippers
            else [partial(upstreams["application"].ready, settings.ready_timeout)]
        )
        gateway = route_in_process(listener("gateway", gateway_checks), list(shippers.values()))
        for name, upstream in upstreams.items():
            route_remote(gateway, upstream, REMOTE_ROUTES[name], OPENAPI_PATHS[name]())
        status_page.register(gateway, metrics)
        apps["gateway"] = (gateway, settings.gateway_port)
    return apps


def fast_lane(app: QuartTrio, name: str, metrics: Metrics, settings: Settings) -> FastLane | QuartTrio:
    """``app`` behind a lane for its fast routes, when it has any."""
    if not app.config.get(FAST_ROUTES_KEY):
        return app
    return FastLane(
        app, name, metrics,
        max_request_bytes=settings.max_request_bytes, max_decompressed_bytes=settings.max_decompressed_bytes,
    )


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
    shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            if shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                raise KeyboardInterrupt
            log.info("%s: shutting down gracefully", signal.Signals(signum).name)
            shutdown.set()


async def run(
    settings: Settings,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until shut down. Reports a :class:`Runtime` once every listener is up."""
    api_keys = load_api_keys(settings, trio.current_time)  # a bad key file stops start-up here
    roles = settings.role_set()
    metrics = Metrics()
    profiles = build_profiles(settings, metrics)
    outbox = build_outbox(settings, metrics)
    upstreams = build_upstreams(settings, metrics)
    tracing = build_tracing(settings)
    shutdown = trio.Event()

    async with trio.open_nursery() as background:
        if handle_signals:
            await background.start(watch_signals, shutdown)
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

        async with trio.open_nursery() as producers:
            for profile in profiles.values():
                await producers.start(profile.run)
            if "infrastructure" in profiles and settings.collector_interval > 0:
                collector = Collector(
                    profiles["infrastructure"],
                    metrics,
                    interval=settings.collector_interval,
                    host=settings.metrics_host,
                    rate=settings.metrics_rate,
                )
                await background.start(collector.run)
            apps = build_apps(settings, metrics, profiles, outbox, upstreams, api_keys, tracing)
            await background.start(watch_readiness, {name: app for name, (app, _) in apps.items()}, metrics)
            async with trio.open_nursery() as listeners:
                addresses: dict[str, list[str]] = {}
                for name in LISTENERS:
                    if name not in apps:
                        continue
                    app, port = apps[name]
                    # With tracing on, every request goes through the Quart hooks that make its spans.
                    served: Any = app if tracing is not None else fast_lane(app, name, metrics, settings)
                    addresses[name] = await listeners.start(
                        partial(
                            hypercorn.trio.serve, served, hypercorn_config(settings, port), shutdown_trigger=shutdown.wait
                        )
                    )
                    log.info("%s listening on %s", name, ", ".join(addresses[name]))
                task_status.started(Runtime(addresses, settings, profiles, metrics, shutdown))
            log.info("listeners stopped; draining producer buffers")
            for profile in profiles.values():
                profile.close()
        background.cancel_scope.cancel()
    if tracing is not None:
        # The spans of the drained buffers go out too, within a bound: a collector away cannot hold the exit.
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            await trio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)
    log.info("stopped")
