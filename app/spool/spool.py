"""The durable spool of a disk-mode stream: 202 means fsynced on disk, and Kafka is fed from there.

Three tasks, in the spool's own nursery:

- the **writer** takes the appends that arrived together (a bounded channel) and commits them in
  one transaction, one fsync, in a worker thread; each request waits for its group's commit and
  is answered 202 only after it. A write or fsync error answers that group 503 and marks the
  stream not ready until a commit succeeds again; the process goes on.
- the **feeder** hands spooled records to the stream's producer profile, in spool order, as fast
  as the profile has room (its bound in events and bytes) and its breaker allows. Fresh records
  come from a bounded in-memory copy of the newest appends; after a restart, an outage longer
  than that copy, or a record Kafka did not take in time, they are read back from disk.
- the **deleter** deletes, a batch at a time, the rows Kafka acknowledged (delivered to their
  topic, or to its dead-letter topic for a record Kafka refused for good). A deleted row is the
  checkpoint: what is on disk is what is not known to be in Kafka.

While Kafka is away the stream keeps answering 202 up to ``max_bytes`` (and a free-space floor
on the spool's file system); past that, 503 with Retry-After, or, with ``drop_oldest``, the
oldest spooled events are dropped, counted and logged.
"""

from __future__ import annotations

import collections
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from app.core import DeliveryObserver, Record, Refusal
from app.observability.metrics import Metrics
from app.spool.store import Opened, Row, SpoolCorrupt, SpoolError, Store

log = logging.getLogger(__name__)

READ_BATCH: Final = 2000
DELETE_EVERY: Final = 0.02
FEED_WAIT: Final = 0.05
FREE_SPACE_EVERY: Final = 1.0


class Fed(Protocol):
    """The producer profile a spool feeds (:class:`app.profile.ProducerProfile`)."""

    name: str
    topic: str
    stopped: trio.Event  # set once it has drained and flushed at shutdown

    def room(self) -> tuple[int, int]: ...

    def submit(self, records: list[Record], size: int) -> object: ...


@dataclass(slots=True)
class _Append:
    records: list[Record]
    size: int
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    first_seq: int = 0


class _Handed:
    """A spooled record handed to Kafka: its fate goes to the deleter (or back to the feeder)."""

    __slots__ = ("_spool", "seq", "size", "_then")

    def __init__(self, spool: Spool, seq: int, size: int, then: DeliveryObserver | None) -> None:
        self._spool = spool
        self.seq = seq
        self.size = size
        self._then = then

    def delivered_to(self, dead_letter_topic: bool) -> None:
        self._spool._acknowledged(self.seq, self.size)
        if self._then is not None:
            self._then.delivered_to(dead_letter_topic)

    def refused(self) -> None:
        if self._then is not None:
            self._then.refused()

    def lose(self) -> None:
        # Refused for good and its dead letter too: counted lost by the profile; off the spool.
        self._spool._acknowledged(self.seq, self.size)
        if self._then is not None:
            self._then.lose()

    def undelivered(self) -> None:
        """Kafka did not take it in time: it stays spooled and is handed again."""
        self._spool._rewind(self.seq)


class Spool:
    """The spool of one stream (``name``) in ``store``, feeding ``profile``."""

    def __init__(
        self,
        store: Store,
        profile: Fed,
        metrics: Metrics,
        *,
        max_bytes: int,
        min_free_bytes: int,
        drop_oldest: bool,
        retry_after_seconds: int,
        flush_timeout: float = 30.0,
        queue: int = 10_000,
        memory_copy_events: int = 100_000,
    ) -> None:
        self.name = profile.name
        self._store = store
        self._profile = profile
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._min_free = min_free_bytes
        self._drop_oldest = drop_oldest
        self._retry_after = str(retry_after_seconds)
        self._flush_timeout = flush_timeout
        self._send, self._receive = trio.open_memory_channel[_Append](queue)
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._wake_feeder = trio.Event()
        # The newest appends, in seq order, while the feeder is caught up with the disk.
        self._copy: collections.deque[tuple[int, Record]] = collections.deque()
        self._copying = False
        self._copy_limit = memory_copy_events
        self._handed = 0  # the highest seq handed to the profile
        self._acked: list[int] = []
        self._acked_bytes = 0
        self._dropped_through = 0
        self.events = 0
        self.bytes = 0
        self._pending_bytes = 0  # appended, not yet committed
        self._oldest: float | None = None  # when the oldest spooled row was appended
        self._free = math.inf
        self._free_at = -math.inf
        self.failure: str | None = None
        self.quarantined = 0
        name = self.name
        metrics.spool_events.labels(name).set_function(lambda: self.events)
        metrics.spool_bytes.labels(name).set_function(lambda: self.bytes)
        metrics.spool_oldest_age.labels(name).set_function(self.oldest_age)
        for counter in (metrics.spool_replayed, metrics.spool_dropped, metrics.spool_quarantined, metrics.spool_write_errors):
            counter.labels(name)
        metrics.spool_possible_duplicates.labels(name)

    # -- the request side (trio thread) -----------------------------------------------

    async def append(self, records: list[Record], size: int) -> None:
        """Return once ``records`` are committed and fsynced; raise a 503 Refusal when they cannot be."""
        if self._closed:
            raise Refusal(503, "shutting down", "this instance is shutting down", headers={"Retry-After": self._retry_after})
        if not self._drop_oldest and self.bytes + self._pending_bytes + size > self._max_bytes:
            self._metrics.rejected.labels(self.name, "spool full").inc(len(records))
            raise Refusal(
                503, "spool full", f"the {self.name} spool holds {self.bytes} bytes of its {self._max_bytes}; retry later",
                headers={"Retry-After": self._retry_after},
            )
        if self._free_space() - size < self._min_free:
            self._metrics.rejected.labels(self.name, "disk full").inc(len(records))
            raise Refusal(
                503, "spool full", f"the {self.name} spool's file system is below its free-space floor; retry later",
                headers={"Retry-After": self._retry_after},
            )
        request = _Append(records, size)
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise Refusal(
                503, "spool busy", f"the {self.name} spool has {self._receive.statistics().current_buffer_used} writes queued",
                headers={"Retry-After": self._retry_after},
            ) from None
        except trio.ClosedResourceError:
            raise Refusal(503, "shutting down", "this instance is shutting down", headers={"Retry-After": self._retry_after}) from None
        self._pending_bytes += size
        try:
            # Not cancellable from here: once queued, the request's fate is the group's.
            with trio.CancelScope(shield=True):
                await request.done.wait()
        finally:
            self._pending_bytes -= size
        if request.error is not None:
            raise Refusal(
                503, "spool write failed", f"the {self.name} spool could not write: {request.error}",
                headers={"Retry-After": self._retry_after},
            )

    def oldest_age(self) -> float:
        """Seconds since the oldest event still spooled was appended (0 when none is)."""
        return max(0.0, time.time() - self._oldest) if self._oldest is not None and self.events > 0 else 0.0

    async def ready(self) -> str | None:
        """Why the stream is not ready, when its spool is the reason."""
        if self.failure is not None:
            return f"{self.name} spool: {self.failure}"
        return None

    def _free_space(self) -> float:
        now = time.monotonic()
        if now - self._free_at >= FREE_SPACE_EVERY:
            try:
                self._free = shutil.disk_usage(self._store.directory).free
            except OSError:
                self._free = math.inf
            self._free_at = now
        return self._free

    def close(self) -> None:
        """Stop taking appends; what was appended is committed, and the feeder stops handing more."""
        if not self._closed:
            self._closed = True
            self._send.close()
            self._wake_feeder.set()

    # -- the tasks -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store (salvaging a damaged one), then write, feed and delete until closed."""
        opened = await trio.to_thread.run_sync(self._store.open, limiter=self._limiter)
        self._opened(opened)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._deleter)
                await nursery.start(self._feeder)
                task_status.started()
                await self._writer()  # returns once closed and every queued append is answered
                # The feeder stops; the deleter runs on while the profile drains what it was handed,
                # so what Kafka acknowledged by then is not sent again at the next start.
                self._wake_feeder.set()
                with trio.move_on_after(self._flush_timeout + 5.0):
                    await self._profile.stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._delete_acked()
                await trio.to_thread.run_sync(self._store.close, limiter=self._limiter)

    def _opened(self, opened: Opened) -> None:
        self.events, self.bytes = opened.events, opened.bytes
        self._oldest = opened.oldest
        if opened.quarantined:
            self.quarantined = opened.quarantined
            self._metrics.spool_quarantined.labels(self.name).inc(opened.quarantined)
            log.error(
                "%s spool: %d damaged records quarantined in %s; the rest is delivered",
                self.name, opened.quarantined, self._store.directory / "quarantine", extra={"service": self.name},
            )
        if opened.handed:
            self._metrics.spool_possible_duplicates.labels(self.name).inc(opened.handed)
        if opened.events:
            log.info(
                "%s spool: %d events from before the restart to deliver (%d were handed to Kafka already and may "
                "reach it twice; each carries its event-id header)", self.name, opened.events, opened.handed,
                extra={"service": self.name},
            )
        self._copying = opened.events == 0

    async def _writer(self) -> None:
        async with self._receive:
            async for first in self._receive:
                group = [first]
                while True:
                    try:
                        group.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._commit(group)

    async def _commit(self, group: list[_Append]) -> None:
        rows = [(r.key, r.value, r.headers) for request in group for r in request.records]
        size = sum(request.size for request in group)
        excess = self.bytes + size - self._max_bytes if self._drop_oldest else 0
        created = time.time()
        started = time.perf_counter()
        try:
            if excess > 0:
                dropped, dropped_bytes, through, oldest = await trio.to_thread.run_sync(
                    self._store.drop_oldest, excess, limiter=self._limiter
                )
                self._dropped(dropped, dropped_bytes, through, oldest)
            first = await trio.to_thread.run_sync(self._store.append, rows, created, limiter=self._limiter)
        except SpoolError as error:
            self._metrics.spool_write_errors.labels(self.name).inc()
            self.failure = str(error)
            log.error("%s spool: a write failed: %s", self.name, error, extra={"service": self.name})
            for request in group:
                request.error = str(error)
                request.done.set()
            return
        self._metrics.spool_fsync_duration.labels(self.name).observe(time.perf_counter() - started)
        self.failure = None
        self.events += len(rows)
        self.bytes += size
        if self._oldest is None or self.events == len(rows):
            self._oldest = created
        seq = first
        for request in group:
            request.first_seq = seq
            if self._copying:
                for record in request.records:
                    self._copy.append((seq, record))
                    seq += 1
            else:
                seq += len(request.records)
            request.done.set()
        if len(self._copy) > self._copy_limit:
            # Kafka is slower than the appends: the copy is given up until the feeder catches up from disk.
            self._copy.clear()
            self._copying = False
        self._wake_feeder.set()

    def _dropped(self, dropped: int, dropped_bytes: int, through: int, oldest: float | None) -> None:
        if not dropped:
            return
        self.events -= dropped
        self.bytes -= dropped_bytes
        self._dropped_through = max(self._dropped_through, through)
        self._oldest = oldest
        self._metrics.spool_dropped.labels(self.name).inc(dropped)
        log.warning(
            "%s spool: full; dropped its %d oldest events (%d bytes) to take new ones", self.name, dropped, dropped_bytes,
            extra={"service": self.name, "count": dropped},
        )
        self._copy.clear()
        self._copying = False

    async def _feeder(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self._closed:
            events, size_free = self._profile.room()
            if events <= 0 or size_free <= 0:
                await trio.sleep(FEED_WAIT)  # the profile's bound, or its breaker: the records wait on disk
                continue
            batch = await self._next_batch(min(READ_BATCH, events))
            # As many as the profile's bound in bytes takes; the rest comes again next round.
            size = 0
            for taken, (_, record) in enumerate(batch):
                if size + record.size > size_free:
                    batch = batch[:taken]
                    break
                size += record.size
            if not batch:
                self._wake_feeder = trio.Event()
                with trio.move_on_after(FEED_WAIT):
                    await self._wake_feeder.wait()
                continue
            if self._closed:
                return
            records = []
            for seq, record in batch:
                record.settlement = _Handed(self, seq, record.size, record.settlement)
                records.append(record)
            self._profile.submit(records, size)
            self._handed = batch[-1][0]

    async def _next_batch(self, limit: int) -> list[tuple[int, Record]]:
        """Up to ``limit`` next records to hand, in seq order: from the copy when it continues the
        cursor (looked at, not taken: the feeder takes what it hands), else from disk."""
        copy = self._copy
        while copy and copy[0][0] <= self._handed:
            copy.popleft()
        if copy and copy[0][0] == self._handed + 1:
            batch: list[tuple[int, Record]] = []
            for seq, record in copy:
                if len(batch) >= limit or seq != self._handed + 1 + len(batch):
                    break
                batch.append((seq, record))
            return batch
        after = self._handed
        try:
            rows, damaged = await trio.to_thread.run_sync(self._store.read, after, limit, limiter=self._limiter)
        except SpoolCorrupt as error:
            log.error("%s spool: %s; quarantining it and keeping what reads back whole", self.name, error)
            lost = await trio.to_thread.run_sync(self._store.salvage, limiter=self._limiter)
            self._quarantine(lost)
            opened = await trio.to_thread.run_sync(self._store.reopened, limiter=self._limiter)
            self.events, self.bytes, self._oldest = opened.events, opened.bytes, opened.oldest
            self._handed = 0
            self._copy.clear()
            self._copying = False
            return []
        except SpoolError as error:
            self.failure = str(error)
            log.error("%s spool: a read failed: %s", self.name, error, extra={"service": self.name})
            await trio.sleep(1.0)
            return []
        if damaged:
            log.error("%s spool: %d records failed their checksum", self.name, damaged)
            self._quarantine(damaged)
        if self._handed != after:
            return []  # rewound while reading: read again from the new cursor
        if copy:
            rows = [row for row in rows if row.seq < copy[0][0]]
            if not rows:
                self._handed = copy[0][0] - 1
                return []
        if not rows:
            if not copy:
                self._copying = True  # caught up with the disk: fresh appends come from memory again
            return []
        self._metrics.spool_replayed.labels(self.name).inc(len(rows))
        return [(row.seq, _record(row)) for row in rows]

    def _quarantine(self, count: int) -> None:
        if count:
            self.quarantined += count
            self._metrics.spool_quarantined.labels(self.name).inc(count)

    def _rewind(self, seq: int) -> None:
        """A handed record came back undelivered: hand everything from it again, read from disk."""
        if seq <= self._handed:
            self._handed = min(self._handed, seq - 1)
            self._copy.clear()
            self._copying = False
            self._wake_feeder.set()

    def _acknowledged(self, seq: int, size: int) -> None:
        if seq > self._dropped_through:
            self._acked.append(seq)
            self._acked_bytes += size

    async def _deleter(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(DELETE_EVERY)
            await self._delete_acked()

    async def _delete_acked(self) -> None:
        if not self._acked:
            return
        acked, size = self._acked, self._acked_bytes
        self._acked, self._acked_bytes = [], 0
        try:
            oldest = await trio.to_thread.run_sync(self._store.delete, acked, self._handed, limiter=self._limiter)
        except SpoolError as error:
            # Kept for the next pass: a row is deleted only once its deletion commits.
            self._acked = acked + self._acked
            self._acked_bytes += size
            self.failure = str(error)
            log.error("%s spool: deleting delivered records failed: %s", self.name, error)
            return
        self.events -= len(acked)
        self.bytes -= size
        self._oldest = oldest


def _record(row: Row) -> Record:
    return Record(row.key, row.value, list(row.headers))


__all__: Sequence[str] = ("Spool",)
