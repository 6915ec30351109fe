"""The Fluentd forward listener (TCP on ``FORWARD_PORT``): :mod:`app.dialects.forward` over a socket.

Each message's events go to the application stream, retried while it refuses (nothing more is
read meanwhile). A client that sent ``option.chunk`` gets ``{"ack": chunk}`` only once Kafka
has every record of it; when Kafka failed one (dead-lettered or lost) or did not answer within
the ack timeout, no ack is sent and the connection is closed, so the client sends the chunk again.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from app.dialects import forward
from app.observability.metrics import Metrics
from app.sockets.server import Connection, Limits, Submitters, bind_socket, serve_tcp

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    host: str
    port: int
    max_message_bytes: int
    max_decompressed_bytes: int
    shared_key: str
    hostname: str
    ack_timeout: float
    limits: Limits
    reuse_port: bool = False


class ForwardListener:
    def __init__(self, config: ForwardConfig, submitters: Submitters, metrics: Metrics) -> None:
        self.config = config
        self._submitter = submitters("forward", "forward", self.dropped)
        self._metrics = metrics
        for reason in ("invalid", "not_an_array", "too_large", "shutdown"):
            metrics.forward_dropped.labels(reason)
        self._acks = {outcome: metrics.forward_acks.labels(outcome) for outcome in ("sent", "failed", "timeout")}

    def dropped(self, reason: str, count: int) -> None:
        self._metrics.forward_dropped.labels(reason).inc(count)

    async def run(
        self, shutdown: Callable[[], Awaitable[Any]],
        *, task_status: trio.TaskStatus[dict[str, list[str]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until ``shutdown`` returns; reports ``{"forward": [address]}``."""
        config = self.config
        sock = bind_socket(socket.SOCK_STREAM, config.host, config.port, reuse_port=config.reuse_port)
        await sock.bind((config.host, config.port))
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(
                partial(serve_tcp, "forward", sock, self._connection, config.limits, self._metrics, shutdown)
            )
            task_status.started({"forward": addresses})

    async def _connection(self, connection: Connection) -> None:
        config = self.config
        session = forward.Session(
            max_message_bytes=config.max_message_bytes,
            max_decompressed_bytes=config.max_decompressed_bytes,
            shared_key=config.shared_key,
            hostname=config.hostname,
        )
        greeting = session.greeting()
        if greeting is not None and not await connection.send(greeting):
            connection.closed_reason = "error"
            return
        pending = 0
        try:
            while True:
                data = await connection.receive()
                if not data:
                    return
                session.receive_data(data)
                while True:
                    try:
                        event = session.next_event()
                    except forward.ProtocolError as error:
                        log.warning("forward from %s: %s; closing the connection", connection.peer, error)
                        connection.closed_reason = error.reason
                        return
                    if event is None:
                        break
                    if isinstance(event, forward.Reply):
                        if not await connection.send(event.data) or event.close:
                            connection.closed_reason = "handshake"
                            return
                    elif isinstance(event, forward.Ignored):
                        if event.reason != "heartbeat":
                            self.dropped(event.reason, 1)
                    else:
                        pending = len(event.events)
                        if not await self._entries(connection, event):
                            return
                        pending = 0
        finally:
            if pending:
                self.dropped("shutdown", pending)

    async def _entries(self, connection: Connection, entries: forward.Entries) -> bool:
        """Hand the entries over and ack them when asked; whether the connection goes on."""
        if entries.dropped:
            log.warning(
                "forward from %s: %d entries of tag %r dropped: %s",
                connection.peer, entries.dropped, entries.tag[:100], "; ".join(entries.reasons),
            )
            self.dropped("invalid", entries.dropped)
        wants_ack = entries.chunk is not None
        taken = await self._submitter.submit(entries.events, acknowledge=wants_ack)
        if entries.chunk is None:
            return True
        acknowledgements = [accepted.acknowledgement for accepted in taken if accepted.acknowledgement is not None]
        with trio.move_on_after(self.config.ack_timeout):
            for acknowledgement in acknowledgements:
                await acknowledgement.settled.wait()
        if not all(acknowledgement.ok for acknowledgement in acknowledgements):
            timed_out = not all(acknowledgement.settled.is_set() for acknowledgement in acknowledgements)
            self._acks["timeout" if timed_out else "failed"].inc()
            log.warning(
                "forward from %s: chunk %s not acknowledged (%s); closing so that the client sends it again",
                connection.peer, entries.chunk, "Kafka did not answer in time" if timed_out else "Kafka failed records",
            )
            connection.closed_reason = "unacknowledged"
            return False
        self._acks["sent"].inc()
        return await connection.send(forward.ack(entries.chunk))
