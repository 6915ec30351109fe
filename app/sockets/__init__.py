"""Socket listeners beside the HTTP ones, feeding the application stream: syslog over UDP, TCP and
TLS (:mod:`app.sockets.syslog`) and the Fluentd forward protocol (:mod:`app.sockets.forward`).
They take no API key (syslog has no field for one; forward's shared key is its credential), and
the stream's rate limit applies to them as to its HTTP routes. With ``SYSLOG_TOPIC``, syslog
records go to a stream of their own (its topic, buffer and dead letters), under the same rate limit.

:mod:`app.sockets.server` holds what they share: accept loop, connection limit, idle timeout,
the graceful drain, and the submission with backpressure.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from app.admission import Admission
from app.config import Settings
from app.core import Tracer
from app.observability.metrics import Metrics
from app.sockets.forward import ForwardConfig, ForwardListener
from app.sockets.server import Limits, Submitter, Submitters
from app.sockets.syslog import SyslogConfig, SyslogListeners
from app.streams import Stream
from app.tls import ServerTLS


class SocketListener(Protocol):
    async def run(
        self, shutdown: Callable[[], Awaitable[Any]], *, task_status: trio.TaskStatus[dict[str, list[str]]] = ...
    ) -> None:
        """Serve until ``shutdown`` returns and the drain is over; reports the bound addresses by name."""


def build_socket_listeners(
    settings: Settings, metrics: Metrics, stream: Stream, admission: Admission, tracer: Tracer,
    *, syslog_stream: Stream | None = None, syslog_tls: ServerTLS | None = None,
) -> list[SocketListener]:
    """The socket listeners the settings turn on, feeding ``stream`` (the application stream), or
    ``syslog_stream`` for syslog when given; ``admission`` (the application stream's) admits both."""
    listeners: list[SocketListener] = []

    # A read's messages go in slices well inside the stream's bound, so that one always fits once it drains.
    max_batch = max(1, min(settings.max_batch_events, settings.application.buffer_events // 4))

    def submitters_to(target: Stream) -> Submitters:
        def submitters(listener: str, dialect: str, dropped: Callable[[str, int], None]) -> Submitter:
            return Submitter(listener, dialect, target, admission, metrics, tracer, max_batch=max_batch, dropped=dropped)

        return submitters

    # Syslog over TLS serves ``syslog_tls`` (app.tls.load_syslog_tls), which app.tls.watch_tls reloads.
    if settings.syslog_port or (settings.syslog_tls_port and syslog_tls is not None):
        config = SyslogConfig(
            host=settings.host,
            port=settings.syslog_port,
            tls_port=settings.syslog_tls_port,
            max_message_bytes=settings.syslog_max_message_bytes,
            limits=Limits(settings.syslog_max_connections, settings.syslog_idle_timeout, settings.graceful_timeout),
            reuse_port=settings.reuse_port,
        )
        listeners.append(SyslogListeners(config, submitters_to(syslog_stream or stream), metrics, syslog_tls))
    if settings.forward_port:
        forward_config = ForwardConfig(
            host=settings.host,
            port=settings.forward_port,
            max_message_bytes=settings.forward_max_message_bytes,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            shared_key=settings.forward_shared_key,
            hostname=socket.gethostname(),
            # Records settle within librdkafka's delivery timeout; a little more for the last poll.
            ack_timeout=settings.application.delivery_timeout_ms / 1000 + 5.0,
            limits=Limits(settings.forward_max_connections, settings.forward_idle_timeout, settings.graceful_timeout),
            reuse_port=settings.reuse_port,
        )
        listeners.append(ForwardListener(forward_config, submitters_to(stream), metrics))
    return listeners
