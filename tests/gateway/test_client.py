"""The gateway's upstream connection pool against a local HTTP server on real sockets (no Kafka)."""

from __future__ import annotations

import re
from functools import partial

import trio

from app.gateway.client import Origin, Pool

HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"2")]


async def server(nursery: trio.Nursery, closed: list[int], idle_timeout: float) -> int:
    """Answers each request after 0.1 s, keeps connections alive, closes one idle for ``idle_timeout``.

    ``closed`` gets a 1 for every connection that ended, by either side.
    """

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                with trio.move_on_after(idle_timeout) as idle:
                    while b"\r\n\r\n" not in buffer:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        buffer += chunk
                if idle.cancelled_caught:
                    return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                declared = re.search(rb"(?i)content-length: *(\d+)", head)
                assert declared is not None, head
                length = int(declared.group(1))
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[length:]
                await trio.sleep(0.1)
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        except trio.BrokenResourceError:
            return
        finally:
            closed.append(1)
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def pool_with_two_idle(
    nursery: trio.Nursery, *, server_idle_timeout: float, expiry: float
) -> tuple[Pool, list[int]]:
    """A pool holding two idle connections to a fresh server; the server's list of ended connections."""
    closed: list[int] = []
    port = await server(nursery, closed, idle_timeout=server_idle_timeout)
    origin = Origin("http", "127.0.0.1", port, "127.0.0.1")
    pool = Pool(max_connections=4, connect_timeout=1, timeout=5, keepalive_expiry=expiry)
    async with trio.open_nursery() as requests:
        for _ in range(2):  # at once: each takes a connection of its own
            requests.start_soon(partial(pool.request, origin, b"POST", b"/x", HEADERS, b"{}"))
    assert pool.idle_count() == 2
    return pool, closed


async def until_both_ended(closed: list[int]) -> None:
    with trio.fail_after(5):
        while len(closed) < 2:
            await trio.sleep(0.01)


async def test_prune_closes_connections_past_their_expiry(nursery: trio.Nursery) -> None:
    pool, closed = await pool_with_two_idle(nursery, server_idle_timeout=60, expiry=1.0)
    assert await pool.prune() == 0, "both are fresh"
    await trio.sleep(1.3)
    assert await pool.prune() == 2 and pool.idle_count() == 0
    await until_both_ended(closed)  # the server sees both go
    await pool.aclose()


async def test_prune_closes_connections_the_server_closed(nursery: trio.Nursery) -> None:
    pool, closed = await pool_with_two_idle(nursery, server_idle_timeout=0.2, expiry=60)
    await until_both_ended(closed)
    await trio.sleep(0.05)  # the FIN reaches the client's sockets
    assert await pool.prune() == 2 and pool.idle_count() == 0, "no socket left in CLOSE_WAIT"
    await pool.aclose()
