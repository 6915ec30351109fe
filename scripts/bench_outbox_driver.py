#!/usr/bin/env python3
"""Group-commit throughput of the outbox insert through two psycopg paths, side by side.

1. the sync API run in ``trio.to_thread`` (what app/outbox/writer.py does)
2. the asyncio API reached from trio through trio-asyncio

Each path runs the same INSERT of app/db/outbox.py in the same group-commit loop: C
concurrent "requests" of R rows each, grouped while a commit is in flight. Prints a table.

    .venv/bin/python scripts/bench_outbox_driver.py [--seconds 5] [--concurrency 1 16 64] [--rows 1 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio_asyncio  # before psycopg: it patches asyncio.get_running_loop, which psycopg binds at import

import psycopg  # noqa: I001

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.db import outbox as store  # noqa: E402
from app.db.database import apply_migrations  # noqa: E402
from scripts.bench_support import percentile  # noqa: E402

PAYLOAD = b'{"eventId":"6a34718f-6872-458c-87f0-8856cba5e556","userId":"user-1","type":"PAYMENT","amount":"99.99","currency":"USD"}'
HEADERS = '[["event-id","6a34718f-6872-458c-87f0-8856cba5e556"]]'


def params(rows: int) -> tuple[Any, ...]:
    ids = [uuid.uuid4() for _ in range(rows)]
    return (ids, [None] * rows, [b"h"] * rows, ["t"] * rows, [b"k"] * rows, [PAYLOAD] * rows, [HEADERS] * rows)


def merge(groups: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple([value for group in groups for value in group[i]] for i in range(7))


async def group_commit_loop(
    commit: Callable[[tuple[Any, ...]], Awaitable[None]], concurrency: int, rows: int, seconds: float
) -> tuple[float, list[float]]:
    send, receive = trio.open_memory_channel[tuple[tuple[Any, ...], trio.Event]](concurrency)
    latencies: list[float] = []
    done_rows = 0
    deadline = trio.current_time() + seconds

    async def writer() -> None:
        async for first in receive:
            group = [first]
            while True:
                try:
                    group.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await commit(merge([g[0] for g in group]))
            for _, event in group:
                event.set()

    async def client() -> None:
        nonlocal done_rows
        while trio.current_time() < deadline:
            event = trio.Event()
            started = trio.current_time()
            await send.send((params(rows), event))
            await event.wait()
            latencies.append(trio.current_time() - started)
            done_rows += rows

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async with trio.open_nursery() as clients:
            for _ in range(concurrency):
                clients.start_soon(client)
        nursery.cancel_scope.cancel()
    return done_rows / seconds, latencies


async def bench_thread(url: str, concurrency: int, rows: int, seconds: float) -> tuple[float, list[float]]:
    conn = psycopg.connect(url, autocommit=True)
    limiter = trio.CapacityLimiter(1)

    def commit_sync(values: tuple[Any, ...]) -> None:
        with conn.transaction():
            conn.execute(store._INSERT, values)

    async def commit(values: tuple[Any, ...]) -> None:
        await trio.to_thread.run_sync(commit_sync, values, limiter=limiter)

    try:
        return await group_commit_loop(commit, concurrency, rows, seconds)
    finally:
        conn.close()


async def bench_asyncio(url: str, concurrency: int, rows: int, seconds: float) -> tuple[float, list[float]]:
    async with trio_asyncio.open_loop():
        conn = await trio_asyncio.aio_as_trio(psycopg.AsyncConnection.connect)(url, autocommit=True)

        async def commit_async(values: tuple[Any, ...]) -> None:
            async with conn.transaction():
                await conn.execute(store._INSERT, values)

        async def commit(values: tuple[Any, ...]) -> None:
            await trio_asyncio.aio_as_trio(commit_async)(values)

        try:
            return await group_commit_loop(commit, concurrency, rows, seconds)
        finally:
            await trio_asyncio.aio_as_trio(conn.close)()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgresql://gateway:gateway@127.0.0.1:5433/gateway")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        apply_migrations(url, timeout=5)
        print(f"{'driver':<30}{'clients':>8}{'rows/req':>9}{'rows/s':>10}{'req p50 ms':>11}{'req p99 ms':>11}")
        for rows in args.rows:
            for concurrency in args.concurrency:
                for name, bench in (("sync psycopg + to_thread", bench_thread), ("async psycopg + trio-asyncio", bench_asyncio)):
                    rate, latencies = await bench(url, concurrency, rows, args.seconds)
                    print(
                        f"{name:<30}{concurrency:>8}{rows:>9}{rate:>10.0f}"
                        f"{percentile(latencies, 0.5) * 1e3:>11.2f}{percentile(latencies, 0.99) * 1e3:>11.2f}",
                        flush=True,
                    )
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    trio.run(main)
