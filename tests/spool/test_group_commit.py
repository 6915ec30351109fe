"""The spool's own logic on real files, with a profile that takes nothing (Kafka away) or everything:
requests that arrive together share one fsync, and a full spool refuses or drops its oldest."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from app.core import Record, Refusal
from app.observability.metrics import Metrics
from app.spool.spool import Spool
from app.spool.store import Store


class Away:
    """A profile whose Kafka is away: it has no room, so everything stays spooled."""

    name = "application"
    topic = "logs"

    def __init__(self) -> None:
        self.stopped = trio.Event()
        self.stopped.set()
        self.taken: list[Record] = []

    def room(self) -> tuple[int, int]:
        return 0, 0

    def submit(self, records: list[Record], size: int) -> object:
        self.taken += records
        return None


def records(count: int, size: int = 100) -> list[Record]:
    return [Record(b"k", b"v" * size, [("event-id", str(i).encode())]) for i in range(count)]


def away_spool(
    tmp_path: Path, *, max_bytes: int, drop_oldest: bool = False, retry_after: int = 1
) -> tuple[Spool, Metrics]:
    metrics = Metrics()
    spool = Spool(
        Store(tmp_path, "application"), Away(), metrics, max_bytes=max_bytes, min_free_bytes=0,
        drop_oldest=drop_oldest, retry_after_seconds=retry_after,
    )
    return spool, metrics


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"service": "application"}) or 0.0


async def test_requests_that_arrive_together_share_one_fsync(tmp_path: Path) -> None:
    spool, metrics = away_spool(tmp_path, max_bytes=10**9)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        async with trio.open_nursery() as clients:
            for _ in range(200):
                clients.start_soon(spool.append, records(5), 5 * 101)
        commits = sample(metrics, "spool_fsync_duration_seconds_count")
        assert spool.events == 1000
        assert 1 <= commits < 200 / 4, f"{commits} commits for 200 requests"
        spool.close()


async def test_a_full_spool_refuses_with_retry_after(tmp_path: Path) -> None:
    spool, _ = away_spool(tmp_path, max_bytes=50 * 101, retry_after=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        for _ in range(5):
            await spool.append(records(10), 10 * 101)
        with pytest.raises(Refusal) as refused:
            await spool.append(records(10), 10 * 101)
        assert (refused.value.status, refused.value.error, refused.value.headers["Retry-After"]) == (503, "spool full", "3")
        assert spool.events == 50
        spool.close()


async def test_a_full_spool_set_to_drop_oldest_drops_and_counts_them(tmp_path: Path) -> None:
    spool, metrics = away_spool(tmp_path, max_bytes=50 * 101, drop_oldest=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        for _ in range(8):
            await spool.append(records(10), 10 * 101)
        assert spool.bytes <= 50 * 101
        assert sample(metrics, "spool_dropped_events_total") == 30
        spool.close()
    store = Store(tmp_path, "application")
    store.open()
    kept = [row.headers for row in store.rows()]
    store.close()
    assert len(kept) == 50  # the newest five appends
