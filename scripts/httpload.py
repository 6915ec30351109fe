"""A lean HTTP/1.1 client on trio sockets, for load tests that must not be client-bound.

Keep-alive connections and Content-Length bodies, nothing more: enough for the gateway's
answers, and far cheaper per request than a general-purpose client. ``open_loop`` sends on a
fixed schedule, each request on an idle keep-alive connection (a new one when none is idle),
so a slow answer never delays the next request (no coordinated omission). Latency is measured
from the scheduled time.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import trio

# What a failed exchange raises: the request's outcome is unknown.
TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class Answer:
    scheduled: float  # seconds from the start
    status: int
    latency: float  # from the scheduled time to the end of the answer


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


def request_bytes(
    host: str,
    path: str,
    body: bytes,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def send_times(rate: float, count: int) -> Iterator[float]:
    """The fixed schedule of an open loop: ``count`` send times, in seconds from the start."""
    return (i / rate for i in range(count))


class Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.reusable = True

    async def _receive(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    async def exchange(self, request: bytes) -> Reply:
        await self.stream.send_all(request)
        while b"\r\n\r\n" not in self.buffer:
            await self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise ConnectionError(f"not an HTTP answer: {lines[0][:80]!r}") from None
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise ConnectionError("chunked answers are not supported")
            elif name == b"connection" and value.strip().lower() == b"close":
                self.reusable = False
        while len(self.buffer) < length:
            await self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, body)


class Pool:
    """Keep-alive connections to one address: a request takes an idle one, or opens one when none is idle.

    A connection the server has closed, or idle for ``max_idle`` seconds, is closed rather than
    reused: a server closes idle connections after its keep-alive timeout (hypercorn's default
    is 5 s), and a request sent on one it is closing fails with an outcome the client cannot
    know. Below hypercorn's default (the gateway's own listeners keep 75 s), the pool does not
    send on such a connection, so it does not have to guess whether to send again.
    """

    def __init__(self, host: str, port: int, max_idle: float = 4.0) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        # With the time each went idle; taken oldest first, so requests take turns on every connection.
        self._idle: collections.deque[tuple[Connection, float]] = collections.deque()

    async def open(self, count: int) -> None:
        """Open ``count`` connections ahead of the first request, as clients that keep them do."""
        for _ in range(count):
            self._idle.append((Connection(await trio.open_tcp_stream(self.host, self.port)), trio.current_time()))

    async def _take(self) -> Connection:
        now = trio.current_time()
        while self._idle:
            connection, since = self._idle.popleft()
            # Readable while idle: the server closed it (or sent what no request asked for).
            if now - since < self.max_idle and not connection.stream.socket.is_readable():
                return connection
            await trio.aclose_forcefully(connection.stream)
        return Connection(await trio.open_tcp_stream(self.host, self.port))

    async def exchange(self, request: bytes) -> Reply:
        """Send ``request`` and read its answer; a connection that fails (or is cancelled) is closed."""
        connection = await self._take()
        try:
            reply = await connection.exchange(request)
        except BaseException:
            await trio.aclose_forcefully(connection.stream)
            raise
        if connection.reusable:
            self._idle.append((connection, trio.current_time()))
        else:
            await connection.stream.aclose()
        return reply

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop()[0].stream.aclose()


async def open_loop(
    host: str, port: int, request: bytes, rate: float, seconds: float, connections: int = 1
) -> list[Answer]:
    """Send ``request`` ``rate`` times a second for ``seconds``, taking turns on ``connections``
    keep-alive connections opened first (more when all are busy); one answer per request (status 0: failed)."""
    answers: list[Answer] = []
    pool = Pool(host, port)
    await pool.open(connections)

    async def one(scheduled: float, start: float) -> None:
        try:
            status = (await pool.exchange(request)).status
        except TRANSPORT_ERRORS:
            status = 0
        answers.append(Answer(scheduled, status, trio.current_time() - start - scheduled))

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for scheduled in send_times(rate, int(rate * seconds)):
            await trio.sleep_until(start + scheduled)
            nursery.start_soon(one, scheduled, start)
    await pool.aclose()
    return answers
