"""The listeners' keep-alive timer (app/http/server.py's ``_KeepAlive``), on a real socket with a small ASGI app:
an idle connection is closed after ``keep_alive_timeout``, never while a request is in flight, each answer
starts the wait again, and a shutdown closes idle connections at once and busy ones once answered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import hypercorn.config
import trio

from app.http.server import serve

TIMEOUT = 0.5


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 at once, or after ``?sleep=SECONDS``."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    query = scope["query_string"].decode()
    if query.startswith("sleep="):
        await trio.sleep(float(query.removeprefix("sleep=")))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def listening() -> AsyncIterator[tuple[Callable[[], Awaitable[Client]], trio.Event]]:
    """The app served on a free port with ``keep_alive_timeout`` TIMEOUT: how to open a connection to it
    (closed at the end), and the event that shuts it down."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = TIMEOUT
    config.graceful_timeout = 5
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        port = int(binds[0].rsplit(":", 1)[1])
        clients: list[Client] = []

        async def connect() -> Client:
            clients.append(Client(await trio.open_tcp_stream("127.0.0.1", port)))
            return clients[-1]

        try:
            yield connect, stop
        finally:
            stop.set()
            for client in clients:
                await client.stream.aclose()


class Client:
    """One HTTP/1.1 keep-alive connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def get(self, target: str = "/") -> int:
        request = h11.Request(method="GET", target=target, headers=[("host", "test")])
        await self.stream.send_all(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        status = 0
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                self.h11.start_next_cycle()
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the answer")

    async def closed_within(self, seconds: float) -> float | None:
        """When the server closed the connection (seconds from now), or None if it had not within ``seconds``."""
        started = trio.current_time()
        with trio.move_on_after(seconds):
            while await self.stream.receive_some(65536):
                pass
            return trio.current_time() - started
        return None


async def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    async with listening() as (connect, _):
        client = await connect()
        assert await client.get() == 200
        closed = await client.closed_within(TIMEOUT * 4)
        assert closed is not None, "the idle connection was never closed"
        assert TIMEOUT * 0.8 <= closed, f"closed after {closed:.2f} s, before the {TIMEOUT} s timeout"
        never_asked = await connect()  # a connection with no request at all is timed too
        assert await never_asked.closed_within(TIMEOUT * 4) is not None


async def test_a_request_slower_than_the_timeout_is_answered_and_the_wait_starts_after_it() -> None:
    async with listening() as (connect, _):
        client = await connect()
        assert await client.get(f"/?sleep={TIMEOUT * 3}") == 200
        closed = await client.closed_within(TIMEOUT * 4)
        assert closed is not None and closed >= TIMEOUT * 0.8, closed


async def test_every_answer_starts_the_wait_again() -> None:
    async with listening() as (connect, _):
        client = await connect()
        for _ in range(8):  # 8 x 0.6 of the timeout: the connection outlives it many times over
            assert await client.get() == 200
            await trio.sleep(TIMEOUT * 0.6)
        assert await client.get() == 200


async def test_a_shutdown_closes_idle_connections_at_once_and_busy_ones_once_answered() -> None:
    async with listening() as (connect, stop):
        idle, busy = await connect(), await connect()
        assert await idle.get() == 200
        answered: list[int] = []
        async with trio.open_nursery() as nursery:
            async def slow() -> None:
                answered.append(await busy.get(f"/?sleep={TIMEOUT}"))

            nursery.start_soon(slow)
            await trio.sleep(TIMEOUT / 5)
            stop.set()
            closed = await idle.closed_within(TIMEOUT / 2)
            assert closed is not None, "the idle connection outlived the shutdown"
        assert answered == [200], "the request in flight was answered"
        assert await busy.closed_within(TIMEOUT * 2) is not None, "the busy connection was closed once answered"
