"""What the socket listeners share: the accept loop with its connection limit, each connection's
reads bounded by an idle timeout, the graceful drain, and the submission of decoded events to
the application stream with backpressure.

Shutdown (the trigger): the listener stops accepting; every connection reads on while bytes keep
arriving (each read waits at most :data:`DRAIN_QUIET`), until a second before the graceful
timeout at the latest; what was read is framed, parsed and handed to the stream, retried while
the stream refuses, until the graceful timeout cancels what is left (counted as dropped).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import trio

from app import events
from app.admission import Admission
from app.core import Refusal, Tracer
from app.dialects.base import Accepted, Decoded, Request
from app.observability.metrics import Metrics
from app.observability.tracing import request_context
from app.streams import Stream
from app.tls import ServerTLS

log = logging.getLogger(__name__)

READ_SIZE: Final = 256 * 1024
DRAIN_QUIET: Final = 0.2  # at shutdown, a connection quiet this long has nothing more to read
BACKOFF_FIRST: Final = 0.05
BACKOFF_MAX: Final = 1.0
SPLIT_AFTER: Final = 3  # refusals as full before a slice is split: larger than the buffer, it would never fit
CLOSE_TIMEOUT: Final = 1.0
_ACCEPT_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_REQUEST: Final = Request("SOCKET", "", {})


def bind_socket(kind: socket.SocketKind, host: str, port: int, *, reuse_port: bool) -> trio.socket.SocketType:
    """A bound trio socket (SO_REUSEPORT when several processes share the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except BaseException:
        sock.close()
        raise


def address(scheme: str, sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def peer_of(sockname: Any) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    idle_timeout: float
    graceful_timeout: float


class Drain:
    """The shutdown state a listener's connections share."""

    def __init__(self) -> None:
        self.started = False
        self.read_until = math.inf  # no reads after this (trio time)
        self._reads: set[trio.CancelScope] = set()

    def begin(self, graceful_timeout: float) -> None:
        now = trio.current_time()
        self.started = True
        # Leave the last second (or half the timeout) to hand over what was read.
        self.read_until = now + max(0.0, graceful_timeout - min(1.0, graceful_timeout / 2))
        for scope in self._reads:
            scope.deadline = min(scope.deadline, now + DRAIN_QUIET, self.read_until)

    @contextlib.contextmanager
    def read_scope(self, deadline: float) -> Iterator[trio.CancelScope]:
        """A cancel scope around one read: the drain shortens its deadline when it begins."""
        with trio.CancelScope(deadline=deadline) as scope:
            self._reads.add(scope)
            try:
                yield scope
            finally:
                self._reads.discard(scope)


class Connection:
    """One accepted connection as a handler sees it: bounded reads and sends."""

    def __init__(self, stream: trio.abc.Stream, peer: str, idle_timeout: float, drain: Drain) -> None:
        self.stream = stream
        self.peer = peer
        self.closed_reason = "eof"
        self._idle_timeout = idle_timeout
        self._drain = drain

    async def receive(self) -> bytes:
        """The next bytes; b"" at the end: the peer closed, went idle, broke, or the drain is over."""
        drain = self._drain
        now = trio.current_time()
        if drain.started:
            deadline = min(now + DRAIN_QUIET, drain.read_until)
            if deadline <= now:
                self.closed_reason = "shutdown"
                return b""
        else:
            deadline = now + self._idle_timeout
        with drain.read_scope(deadline):
            try:
                data = bytes(await self.stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closed_reason = "error"
                return b""
            if not data:
                self.closed_reason = "eof"
            return data
        self.closed_reason = "shutdown" if drain.started else "idle"
        return b""

    async def send(self, data: bytes) -> bool:
        """Send ``data`` within the idle timeout; whether it went."""
        with trio.move_on_after(self._idle_timeout):
            try:
                await self.stream.send_all(data)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
        return False


Handler = Callable[[Connection], Awaitable[None]]


async def serve_tcp(
    listener: str,
    sock: trio.socket.SocketType,
    handler: Handler,
    limits: Limits,
    metrics: Metrics,
    shutdown: Callable[[], Awaitable[Any]],
    *,
    tls: ServerTLS | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on the bound ``sock`` until ``shutdown`` returns, then drain them; over TLS with
    ``tls``, whose context is taken for each connection (a reload serves the next ones)."""
    sock.listen(1024)
    scheme = "tls" if tls is not None else "tcp"
    serving = trio.SocketListener(sock)
    open_connections = metrics.socket_connections.labels(listener)
    drain = Drain()
    active = 0

    async def serve(stream: trio.abc.Stream, peer: str) -> None:
        nonlocal active
        if tls is not None:
            stream = trio.SSLStream(stream, tls.context, server_side=True)
        connection = Connection(stream, peer, limits.idle_timeout, drain)
        try:
            await handler(connection)
        finally:
            active -= 1
            open_connections.dec()
            metrics.socket_closed.labels(listener, connection.closed_reason).inc()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def accept(connections: trio.Nursery) -> None:
        nonlocal active
        while True:
            try:
                stream = await serving.accept()
            except OSError as error:
                if error.errno in _ACCEPT_ERRORS:
                    log.error("%s: accept failed (%s); retrying in 100 ms", listener, error)
                    await trio.sleep(0.1)
                    continue
                raise
            if active >= limits.max_connections:
                metrics.socket_closed.labels(listener, "limit").inc()
                await trio.aclose_forcefully(stream)
                continue
            active += 1
            open_connections.inc()
            connections.start_soon(serve, stream, peer_of(stream.socket.getpeername()))

    open_connections.set(0)
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(accept, connections)
                task_status.started([address(scheme, sock.getsockname())])
                await shutdown()
                accepting.cancel_scope.cancel()
            sock.close()
            drain.begin(limits.graceful_timeout)
            connections.cancel_scope.deadline = trio.current_time() + limits.graceful_timeout
    finally:
        sock.close()


class Submitter:
    """Hands decoded events to the application stream (its rate limit too) on behalf of one listener.

    TCP waits: while the stream refuses (429 rate limited, 503 buffer full or Kafka away) it
    retries the same batch with a bounded backoff and reads nothing meanwhile, so the client's own
    queue holds the rest. UDP cannot wait: ``wait=False`` gives the refusal back to be counted.
    """

    def __init__(
        self, listener: str, dialect: str, stream: Stream, admission: Admission, metrics: Metrics, tracer: Tracer,
        *, max_batch: int, dropped: Callable[[str, int], None],
    ) -> None:
        self._listener = listener
        self._dialect = dialect
        self._stream = stream
        self._admission = admission
        self._tracer = tracer
        self._max_batch = max_batch
        self._dropped = dropped
        self._accepted = metrics.ingest_events.labels(stream.name, dialect, "accepted")
        self._refused = metrics.ingest_events.labels(stream.name, dialect, "refused")

    async def submit(self, batch: Sequence[events.LogIn], *, acknowledge: bool = False, wait: bool = True) -> list[Accepted]:
        """Submit ``batch`` in slices of at most the batch limit; what the stream accepted.

        With ``wait`` it returns once every event is taken (or dropped and counted: over the event
        size limit, or not encodable); without, a refused slice raises its Refusal.
        """
        taken: list[Accepted] = []
        # A stack of slices: one the buffer keeps refusing as full is split in two (it may never fit).
        slices = [list(batch[start : start + self._max_batch]) for start in range(0, len(batch), self._max_batch)]
        slices.reverse()
        while slices:
            outcome = await self._submit(slices.pop(), acknowledge, wait)
            if isinstance(outcome, tuple):
                slices += [outcome[1], outcome[0]]
            elif outcome is not None:
                taken.append(outcome)
        return taken

    async def _submit(
        self, batch: list[events.LogIn], acknowledge: bool, wait: bool
    ) -> Accepted | tuple[list[events.LogIn], list[events.LogIn]] | None:
        """The slice taken, None when nothing of it was left to take, or its halves to submit instead."""
        backoff = BACKOFF_FIRST
        full = 0
        while batch:
            trace = request_context(None, None, None)
            span = self._tracer.start_request(self._dialect, self._dialect, self._listener, trace)
            status = 503
            try:
                self._admission.admit(None, len(batch))
                accepted = await self._stream.submit(Decoded(batch, acknowledge=acknowledge), _REQUEST, trace, span)
                status = 202
                self._accepted.inc(len(batch))
                return accepted
            except Refusal as refusal:
                status = refusal.status
                if refusal.status == 413 and isinstance(refusal.detail, list):
                    batch = self._without_too_large(batch, refusal.detail)
                    continue
                if not wait or refusal.status not in (429, 503):
                    self._refused.inc(len(batch))
                    raise
                if refusal.error == "buffer full":
                    full += 1
                    if full >= SPLIT_AFTER and len(batch) > 1:
                        half = len(batch) // 2
                        return batch[:half], batch[half:]
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
                status = 400
                batch = self._encodable(batch)
                continue
            finally:
                span.end(status)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        return None

    def _without_too_large(self, batch: list[events.LogIn], detail: list[Any]) -> list[events.LogIn]:
        # The refusal names at most 50 of them: the next try names the rest.
        indices = {item.get("index") for item in detail if isinstance(item, dict)}
        kept = [event for index, event in enumerate(batch) if index not in indices]
        if len(kept) == len(batch):
            raise RuntimeError("the stream refused a batch as too large without naming an event")
        self._dropped("too_large", len(batch) - len(kept))
        return kept

    def _encodable(self, batch: list[events.LogIn]) -> list[events.LogIn]:
        kept = []
        for event in batch:
            try:
                _json(event)
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
                continue
            kept.append(event)
        if len(kept) == len(batch):
            raise RuntimeError("the stream could not encode a batch whose events each encode")
        self._dropped("invalid", len(batch) - len(kept))
        return kept


_json: Final = msgspec.json.Encoder().encode

# A listener's submitter: (listener, dialect, how to count what is dropped) -> Submitter.
Submitters = Callable[[str, str, Callable[[str, int], None]], Submitter]
