"""Syslog listeners: UDP and TCP on ``SYSLOG_PORT``, TLS (RFC 5425) on ``SYSLOG_TLS_PORT``.

Framing and parsing are :mod:`app.dialects.syslog`'s; this module moves bytes. TCP and TLS hand
each read's messages to the application stream (or syslog's own, with ``SYSLOG_TOPIC``) as one
batch and read no more until the stream took it (backpressure: the sender's queue holds the rest).
UDP cannot hold a sender back: what the stream refuses is dropped and counted in
``syslog_dropped_total{reason}``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio

from app.core import Refusal
from app.dialects import syslog
from app.observability.metrics import Metrics
from app.sockets.server import (
    Connection, Drain, Limits, Submitter, Submitters, address, bind_socket, peer_of, serve_tcp,
)
from app.tls import ServerTLS

log = logging.getLogger(__name__)

UDP_BATCH: Final = 1000  # datagrams read in one go before they are handed over
UDP_RECEIVE_BUFFER: Final = 4 * 1024 * 1024  # asked of the kernel (capped by net.core.rmem_max)
_UDP_REASONS: Final = {429: "rate_limited", 413: "too_large"}


@dataclass(frozen=True, slots=True)
class SyslogConfig:
    host: str
    port: int
    tls_port: int
    max_message_bytes: int
    limits: Limits
    reuse_port: bool = False


class SyslogListeners:
    """The syslog listeners of one process, feeding one stream (the application stream, or syslog's own)."""

    def __init__(
        self, config: SyslogConfig, submitters: Submitters, metrics: Metrics, tls: ServerTLS | None = None
    ) -> None:
        self.config = config
        self._tls = tls  # TLS on config.tls_port, reloaded by app.tls.watch_tls
        self._submitters = submitters
        self._metrics = metrics
        self._failures = {reason: metrics.syslog_parse_failures.labels(reason) for reason in ("no_pri", "pri", "rfc5424")}
        for reason in ("full", "unavailable", "rate_limited", "too_large", "truncated", "invalid", "shutdown"):
            metrics.syslog_dropped.labels(reason)

    def dropped(self, reason: str, count: int) -> None:
        self._metrics.syslog_dropped.labels(reason).inc(count)

    def _events(self, frames: list[bytes], peer: str, transport: str) -> list[Any]:
        now = dt.datetime.now(dt.timezone.utc)
        batch = []
        for frame in frames:
            message = syslog.parse(frame, now)
            if message.error is not None:
                self._failures[_failure_reason(message.error)].inc()
            batch.append(syslog.log_event(message, peer, transport))
        return batch

    async def run(
        self, shutdown: Callable[[], Awaitable[Any]], *, task_status: trio.TaskStatus[dict[str, list[str]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``shutdown`` returns; reports the bound addresses by listener name."""
        config = self.config
        addresses: dict[str, list[str]] = {}
        async with trio.open_nursery() as nursery:
            if config.port:
                tcp = bind_socket(socket.SOCK_STREAM, config.host, config.port, reuse_port=config.reuse_port)
                await tcp.bind((config.host, config.port))
                addresses["syslog-tcp"] = await nursery.start(
                    partial(serve_tcp, "syslog-tcp", tcp, partial(self._connection, "tcp"), config.limits,
                            self._metrics, shutdown)
                )
                udp = bind_socket(socket.SOCK_DGRAM, config.host, config.port, reuse_port=config.reuse_port)
                await udp.bind((config.host, config.port))
                addresses["syslog-udp"] = await nursery.start(self._serve_udp, udp, shutdown)
            if config.tls_port and self._tls is not None:
                tls = bind_socket(socket.SOCK_STREAM, config.host, config.tls_port, reuse_port=config.reuse_port)
                await tls.bind((config.host, config.tls_port))
                addresses["syslog-tls"] = await nursery.start(
                    partial(serve_tcp, "syslog-tls", tls, partial(self._connection, "tls"), config.limits,
                            self._metrics, shutdown, tls=self._tls)
                )
            task_status.started(addresses)

    async def _connection(self, transport: str, connection: Connection) -> None:
        framer = syslog.Framer(self.config.max_message_bytes)
        submitter = self._submitters(f"syslog-{transport}", "syslog", self.dropped)
        pending: list[Any] = []
        try:
            while True:
                data = await connection.receive()
                if not data:
                    break
                framer.receive_data(data)
                frames: list[bytes] = []
                try:
                    while (frame := framer.next_frame()) is not None:
                        frames.append(frame)
                except syslog.FramingError as error:
                    log.warning("syslog %s from %s: %s; closing the connection", transport, connection.peer, error)
                    connection.closed_reason = error.reason
                    pending = self._events(frames, connection.peer, transport)
                    await submitter.submit(pending)
                    pending = []
                    return
                pending = self._events(frames, connection.peer, transport)
                await submitter.submit(pending)
                pending = []
            if framer.pending():
                # A frame begun and never finished: nothing half-received is passed on.
                self.dropped("truncated", 1)
        finally:
            if pending:
                self.dropped("shutdown", len(pending))

    async def _serve_udp(
        self, sock: trio.socket.SocketType, shutdown: Callable[[], Awaitable[Any]],
        *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        except OSError:
            pass
        submitter = self._submitters("syslog-udp", "syslog", self.dropped)
        drain = Drain()
        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_udp, sock, submitter, drain)
                task_status.started([address("udp", sock.getsockname())])
                await shutdown()
                # What the kernel holds already is read and handed over; then the reader stops.
                drain.begin(self.config.limits.graceful_timeout)
                nursery.cancel_scope.deadline = trio.current_time() + self.config.limits.graceful_timeout

    async def _receive_udp(self, sock: trio.socket.SocketType, submitter: Submitter, drain: Drain) -> None:
        limit = self.config.max_message_bytes
        raw = socket.socket(fileno=sock.fileno())  # the same descriptor, read without waiting
        raw.setblocking(False)
        try:
            while True:
                if not drain.started:
                    with drain.read_scope(math.inf):
                        await trio.lowlevel.wait_readable(sock)
                batch: list[Any] = []
                read = self._read_datagrams(raw, limit, batch)
                await self._hand_over_udp(submitter, batch)
                if drain.started and not read:
                    return
        finally:
            raw.detach()

    def _read_datagrams(self, raw: socket.socket, limit: int, batch: list[Any]) -> int:
        """Read the datagrams waiting (at most UDP_BATCH) into ``batch`` as events; how many were read."""
        read = 0
        while read < UDP_BATCH:
            try:
                datagram, sender = raw.recvfrom(limit + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:  # an ICMP error reported on the socket, say
                log.debug("syslog udp: %s", error)
                continue
            read += 1
            if len(datagram) > limit:
                self.dropped("too_large", 1)
                continue
            frame = syslog.datagram_frame(datagram)
            if frame:
                batch.extend(self._events([frame], peer_of(sender), "udp"))
        return read

    async def _hand_over_udp(self, submitter: Submitter, batch: list[Any]) -> None:
        if not batch:
            await trio.lowlevel.checkpoint()
            return
        try:
            await submitter.submit(batch, wait=False)
        except Refusal as refusal:
            reason = _UDP_REASONS.get(refusal.status)
            if reason is None:
                reason = "full" if refusal.error == "buffer full" else "unavailable"
            self.dropped(reason, len(batch))


def _failure_reason(error: str) -> str:
    if error.startswith("RFC 5424"):
        return "rfc5424"
    if error.startswith("no <PRI>"):
        return "no_pri"
    return "pri"
