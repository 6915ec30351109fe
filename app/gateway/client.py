"""A lean HTTP/1.1 connection pool on trio and h11, for the gateway's forwarding.

The general-purpose pools cost more than the request they forward: measured under 64
concurrent requests, httpcore's pool spent most of the gateway's CPU scanning its connections.
Here a request takes one idle keep-alive connection to its instance (or opens one) and puts
it back when the exchange ends cleanly. Connections are bounded by one limiter per pool;
every step has a deadline.

Errors are translated here: :class:`ConnectFailed` (nothing was sent: safe to try elsewhere),
:class:`PoolBusy`, :class:`UpstreamTimeout` and :class:`UpstreamBroken` (the request may have
been acted on).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio

MAX_RESPONSE_BYTES = 1024 * 1024
RECEIVE_BYTES = 65536

Headers = list[tuple[bytes, bytes]]


class ConnectFailed(Exception):
    """No connection to the instance: the request never left."""


class PoolBusy(Exception):
    """Every connection of the pool stayed in use past the wait."""


class UpstreamTimeout(Exception):
    """The instance did not answer in time."""


class UpstreamBroken(Exception):
    """The exchange failed after the request was sent."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    address: str
    port: int
    server_name: str  # TLS server name and Host header


class Connection:
    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self._socket = sock
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
        self.idle_since = trio.current_time()

    def usable(self, expiry: float) -> bool:
        """Idle within the keep-alive expiry, and not closed by the other side meanwhile."""
        return trio.current_time() - self.idle_since < expiry and not self._socket.is_readable()

    async def exchange(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> tuple[Answer, bool]:
        """One request and its whole answer; whether the connection can serve another."""
        out = self._h11.send(h11.Request(method=method, target=target, headers=list(headers)))
        assert out is not None
        if body:
            out += self._h11.send(h11.Data(data=body)) or b""
        out += self._h11.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
        status = 0
        answer_headers: Headers = []
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(bytes(await self.stream.receive_some(RECEIVE_BYTES)))
            elif isinstance(event, h11.Response):
                status, answer_headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise UpstreamBroken(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamBroken("the connection closed before the answer ended")
            # h11.InformationalResponse (100 Continue and the like): nothing to do
        reusable = self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE
        if reusable:
            self._h11.start_next_cycle()
            self.idle_since = trio.current_time()
        return Answer(status, answer_headers, b"".join(chunks)), reusable


class Pool:
    """Keep-alive connections to any number of origins, at most ``max_connections`` in use."""

    def __init__(self, *, max_connections: int, connect_timeout: float, timeout: float, keepalive_expiry: float = 60.0) -> None:
        self._limiter = trio.CapacityLimiter(max_connections)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes = b""
    ) -> Answer:
        acquired = False
        with trio.move_on_after(self._connect_timeout):
            await self._limiter.acquire()
            acquired = True
        if not acquired:
            raise PoolBusy()
        try:
            connection = await self._idle_connection(origin) or await self._connect(origin)
            try:
                with trio.fail_after(self._timeout):
                    answer, reusable = await connection.exchange(method, target, headers, body)
            except trio.TooSlowError:
                await trio.aclose_forcefully(connection.stream)
                raise UpstreamTimeout() from None
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, UpstreamBroken) as error:
                await trio.aclose_forcefully(connection.stream)
                raise UpstreamBroken(repr(error)) from None
            if reusable:
                self._idle.setdefault(origin, []).append(connection)
            else:
                await trio.aclose_forcefully(connection.stream)
            return answer
        finally:
            self._limiter.release()

    async def _idle_connection(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be alive
            if connection.usable(self._expiry):
                return connection
            await trio.aclose_forcefully(connection.stream)
        return None

    async def _connect(self, origin: Origin) -> Connection:
        try:
            with trio.fail_after(self._connect_timeout):
                tcp = await trio.open_tcp_stream(origin.address, origin.port)
                stream: trio.abc.Stream = tcp
                if origin.scheme == "https":
                    if self._tls is None:
                        self._tls = ssl.create_default_context()
                    tls = trio.SSLStream(tcp, self._tls, server_hostname=origin.server_name, https_compatible=True)
                    await tls.do_handshake()
                    stream = tls
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as error:
            raise ConnectFailed(repr(error)) from None
        return Connection(stream, tcp.socket)

    async def prune(self) -> int:
        """Close the idle connections past their expiry or closed by the other side; how many.

        Taking a connection checks only those above it, so without this the ones below, and those
        to addresses no longer resolved, would stay open (in CLOSE_WAIT once the server closes).
        """
        stale: list[Connection] = []
        for origin in list(self._idle):  # no checkpoint until the lists are settled
            idle = self._idle[origin]
            usable = [connection.usable(self._expiry) for connection in idle]
            stale += [connection for connection, ok in zip(idle, usable) if not ok]
            idle[:] = [connection for connection, ok in zip(idle, usable) if ok]
            if not idle:
                del self._idle[origin]
        for connection in stale:
            await trio.aclose_forcefully(connection.stream)
        return len(stale)

    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                await trio.aclose_forcefully(connection.stream)
        self._idle.clear()
