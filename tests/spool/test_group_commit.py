"""The spool's own logic on real files, with a profile that takes nothing (Kafka away) or everything:
requests that arrive together share one fsync, and a full spool refuses or drops its oldest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from app.core import Record, Refusal
from app.observability.metrics import Metrics
from app.spool.spool import DELETE_EVERY, Spool
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


class Manual:
    """A profile the test settles by hand: it takes what it has room for (``room`` events) and keeps it."""

    name = "application"
    topic = "logs"

    def __init__(self, room: int = 10**6) -> None:
        self.stopped = trio.Event()
        self.stopped.set()
        self.events = room
        self.taken: list[Record] = []

    def room(self) -> tuple[int, int]:
        return self.events - len(self.taken), 10**9

    def submit(self, records: list[Record], size: int) -> object:
        self.taken += records
        return None

    def settle(self, count: int | None = None) -> list[Record]:
        """Kafka acknowledges the oldest ``count`` records taken (all by default)."""
        settled, self.taken = self.taken[:count], self.taken[len(self.taken[:count]):]
        for record in settled:
            assert record.settlement is not None
            record.settlement.delivered_to(False)
        return settled


async def eventually(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


def spooled(tmp_path: Path) -> list[bytes]:
    store = Store(tmp_path, "application")
    store.open()
    try:
        return [row.value for row in store.rows()]
    finally:
        store.close()


# Long enough for the deleter to delete what was settled (it looks every DELETE_EVERY).
SETTLED_IN = 3 * DELETE_EVERY


def values(prefix: str, count: int) -> list[Record]:
    return [Record(b"k", f"{prefix}-{i}".encode(), [("event-id", f"{prefix}-{i}".encode())]) for i in range(count)]


async def test_a_chunk_is_deleted_once_every_record_of_it_is_settled_and_not_before(tmp_path: Path) -> None:
    profile = Manual(room=7)  # takes the chunks of 10 in parts
    spool = Spool(Store(tmp_path, "application"), profile, Metrics(), max_bytes=10**9, min_free_bytes=0,
                  drop_oldest=False, retry_after_seconds=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        for n in range(3):
            await spool.append(values(f"r{n}", 10), 10 * 6)
        handed: list[bytes] = []
        while len(handed) < 30:
            await eventually(lambda: bool(profile.taken), "records handed")
            handed += [record.value for record in profile.settle(3)]
            # A chunk goes once all ten of its records are settled, and not before.
            await eventually(lambda: spool.events == 30 - 10 * (len(handed) // 10), "settled chunks deleted")
            await trio.sleep(SETTLED_IN)
            assert spool.events == 30 - 10 * (len(handed) // 10)
        assert handed == [record.value for n in range(3) for record in values(f"r{n}", 10)]
        await eventually(lambda: spool.events == 0, "every chunk deleted")
        spool.close()
    assert spooled(tmp_path) == []


async def test_a_record_kafka_did_not_take_is_handed_again_from_disk_with_what_followed_it(tmp_path: Path) -> None:
    profile = Manual()
    spool = Spool(Store(tmp_path, "application"), profile, Metrics(), max_bytes=10**9, min_free_bytes=0,
                  drop_oldest=False, retry_after_seconds=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        await spool.append(values("a", 5), 5 * 5)
        await spool.append(values("b", 5), 5 * 5)
        await eventually(lambda: len(profile.taken) == 10, "both appends handed")
        first, rest = profile.taken[:5], profile.taken[5:]
        profile.taken = []
        for record in first:  # the first chunk is delivered
            assert record.settlement is not None
            record.settlement.delivered_to(False)
        await eventually(lambda: spool.events == 5, "the first chunk deleted")
        assert rest[2].settlement is not None
        rest[2].settlement.undelivered()  # the second is not, for one record of it
        await eventually(lambda: len(profile.taken) == 5, "the second chunk handed again")
        assert [record.value for record in profile.taken] == [record.value for record in values("b", 5)]
        # The first handing's records that were delivered after all count nothing twice; the second's settle it.
        for record in rest[:2]:
            assert record.settlement is not None
            record.settlement.delivered_to(False)
        await trio.sleep(SETTLED_IN)
        assert spool.events == 5
        profile.settle()
        await eventually(lambda: spool.events == 0, "every chunk deleted")
        spool.close()
    assert spooled(tmp_path) == []


async def test_records_left_at_shutdown_are_handed_after_a_restart_and_settled_ones_are_not(tmp_path: Path) -> None:
    profile = Manual()
    spool = Spool(Store(tmp_path, "application"), profile, Metrics(), max_bytes=10**9, min_free_bytes=0,
                  drop_oldest=False, retry_after_seconds=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        for n in range(4):
            await spool.append(values(f"r{n}", 5), 5 * 6)
        await eventually(lambda: len(profile.taken) == 20, "every append handed")
        profile.settle(10)  # two chunks delivered, two in flight at shutdown
        spool.close()
    again = Manual()
    spool = Spool(Store(tmp_path, "application"), again, Metrics(), max_bytes=10**9, min_free_bytes=0,
                  drop_oldest=False, retry_after_seconds=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        await eventually(lambda: len(again.taken) == 10, "the unsettled chunks handed again")
        assert [record.value for record in again.taken] == [r.value for n in (2, 3) for r in values(f"r{n}", 5)]
        again.settle()
        await eventually(lambda: spool.events == 0, "every chunk deleted")
        spool.close()
    assert spooled(tmp_path) == []
