"""A lean open-loop HTTP/1.1 client on trio sockets, for load tests that must not be client-bound.

Requests leave on a fixed schedule, each on an idle keep-alive connection (a new one when
none is idle), so a slow answer never delays the next request (no coordinated omission).
Latency is measured from the scheduled time.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True)
class Answer:
    scheduled: float  # seconds from the start
    status: int
    latency: float  # from the scheduled time to the end of the answer


def request_bytes(host: str, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.reusable = True

    async def exchange(self, request: bytes) -> int:
        await self.stream.send_all(request)
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                self.reusable = False
        while len(rest) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            rest += chunk
        self.buffer = rest[length:]
        return status


async def open_loop(host: str, port: int, request: bytes, rate: float, seconds: float) -> list[Answer]:
    """Send ``request`` ``rate`` times a second for ``seconds``; one answer per request."""
    answers: list[Answer] = []
    idle: list[_Connection] = []

    async def one(scheduled: float, start: float) -> None:
        connection = idle.pop() if idle else _Connection(await trio.open_tcp_stream(host, port))
        try:
            status = await connection.exchange(request)
        except (ConnectionError, trio.BrokenResourceError, OSError):
            answers.append(Answer(scheduled, 0, trio.current_time() - start - scheduled))
            await connection.stream.aclose()
            return
        answers.append(Answer(scheduled, status, trio.current_time() - start - scheduled))
        if connection.reusable:
            idle.append(connection)
        else:
            await connection.stream.aclose()

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i in range(int(rate * seconds)):
            scheduled = i / rate
            await trio.sleep_until(start + scheduled)
            nursery.start_soon(one, scheduled, start)
    for connection in idle:
        await connection.stream.aclose()
    return answers
