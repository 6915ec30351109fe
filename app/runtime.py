"""The process: one nursery with the producer profiles, the listeners and their helpers.

Start-up: producer tasks first, then the topic and schema setup (in the background, so
the process comes up and reports not-ready while Kafka or PostgreSQL is away), then the
four hypercorn listeners. Shutdown (SIGTERM, SIGINT or :meth:`Runtime.shutdown`): the
listeners stop accepting and finish their requests within the graceful timeout; then every
profile drains its buffer and flushes its producer within the flush timeout; exit 0.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio
from quart_trio import QuartTrio

from app.config import Settings
from app.db.database import Database
from app.gateway.app import route_in_process
from app.http.listener import ReadyCheck, create_listener_app
from app.kafka.admin import maintain_topics
from app.kafka.producer import KafkaProducer, producer_config
from app.observability.metrics import Metrics
from app.profile import ProducerProfile
from app.shippers.application import ApplicationShipper
from app.shippers.ingest import Submitter

log = logging.getLogger(__name__)

LISTENERS = ("gateway", "application", "infrastructure", "transaction")


@dataclass
class Runtime:
    """What a started gateway hands back: where it listens, and how to stop it."""

    addresses: dict[str, list[str]]
    profiles: dict[str, ProducerProfile]
    metrics: Metrics
    _shutdown: trio.Event = field(repr=False)

    def shutdown(self) -> None:
        """Begin the graceful shutdown (same as SIGTERM)."""
        self._shutdown.set()

    def url(self, listener: str) -> str:
        return self.addresses[listener][0]


def build_profiles(settings: Settings, metrics: Metrics) -> dict[str, ProducerProfile]:
    profiles: dict[str, ProducerProfile] = {}
    for name, profile_settings in settings.profiles().items():
        config = producer_config(
            profile_settings,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.kafka_client_id}-{name}",
            max_message_bytes=max(1_000_000, settings.max_event_bytes + 64 * 1024),
        )
        profiles[name] = ProducerProfile(
            name, profile_settings, KafkaProducer(config), metrics, flush_timeout=settings.flush_timeout
        )
    return profiles


def build_apps(
    settings: Settings, metrics: Metrics, profiles: dict[str, ProducerProfile], database: Database | None
) -> dict[str, tuple[QuartTrio, int]]:
    """The Quart app and port of each listener."""

    def probe(name: str) -> ReadyCheck:
        return lambda: profiles[name].probe(settings.ready_timeout)

    def listener(name: str, checks: Sequence[ReadyCheck]) -> QuartTrio:
        return create_listener_app(name, metrics, checks, max_request_bytes=settings.max_request_bytes)

    application = ApplicationShipper(
        settings,
        Submitter(
            profiles["application"],
            metrics,
            retry_after_seconds=settings.retry_after_seconds,
            max_event_bytes=settings.max_event_bytes,
        ),
    )
    transaction_checks = [probe("transaction")]
    if database is not None:
        transaction_checks.append(database.probe)

    application_app = listener("application", [probe("application")])
    application.register(application_app)
    gateway_app = route_in_process(listener("gateway", [probe("application")]), [application])
    return {
        "gateway": (gateway_app, settings.gateway_port),
        "application": (application_app, settings.application_port),
        "infrastructure": (listener("infrastructure", [probe("infrastructure")]), settings.infrastructure_port),
        "transaction": (listener("transaction", transaction_checks), settings.transaction_port),
    }


def hypercorn_config(settings: Settings, port: int) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
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
    metrics = Metrics()
    profiles = build_profiles(settings, metrics)
    database = Database(settings.database_url, timeout=settings.ready_timeout) if settings.database_url else None
    shutdown = trio.Event()
    topics = [t for p in settings.profiles().values() for t in (p.topic, p.dead_letter_topic)]

    async with trio.open_nursery() as background:
        if handle_signals:
            await background.start(watch_signals, shutdown)
        await background.start(
            partial(
                maintain_topics,
                settings.kafka_bootstrap_servers,
                topics,
                partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                timeout=max(settings.ready_timeout, 5.0),
            )
        )
        if database is not None:
            await background.start(database.run)

        async with trio.open_nursery() as producers:
            for profile in profiles.values():
                await producers.start(profile.run)
            apps = build_apps(settings, metrics, profiles, database)
            async with trio.open_nursery() as listeners:
                addresses: dict[str, list[str]] = {}
                for name in LISTENERS:
                    app, port = apps[name]
                    addresses[name] = await listeners.start(
                        partial(
                            hypercorn.trio.serve, app, hypercorn_config(settings, port), shutdown_trigger=shutdown.wait
                        )
                    )
                    log.info("%s listening on %s", name, ", ".join(addresses[name]))
                task_status.started(Runtime(addresses, profiles, metrics, shutdown))
            log.info("listeners stopped; draining producer buffers")
            for profile in profiles.values():
                profile.close()
        background.cancel_scope.cancel()
    log.info("stopped")
