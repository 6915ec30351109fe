"""The durable spool of a disk-mode stream: 202 means fsynced on disk, and Kafka is fed from there.

- The **writer**, a thread of its own, makes every change to the database, in the order asked.
  It takes the appends that arrived together (from a queue) and commits them in one transaction,
  one fsync, deleting in the same transaction the chunks Kafka acknowledged since the last one.
  Each request waits for its group's commit and is answered 202 only after it. A write or fsync
  error answers that group 503 and marks the stream not ready until a commit succeeds again; the
  process goes on. A thread that stays, rather than one taken for each commit: under load a
  commit handed to a fresh worker thread waited 15 ms for it to start and 5 ms for the trio task
  to be scheduled again, longer than the commit itself.
- The **feeder** (a trio task) hands spooled records to the stream's producer profile, in spool
  order, as fast as the profile has room (its bound in events and bytes) and its breaker allows.
  While it keeps up, fresh records come from a bounded in-memory copy of the newest appends (the
  very records the requests brought); after a restart, an outage longer than that copy, or a
  record Kafka did not take in time, they are read back from disk.
- Chunks whose records Kafka all settled (delivered to their topic, or to its dead-letter topic
  for a record Kafka refused for good) go back to the writer to be deleted, with the next commit
  or, when none comes, within DELETE_EVERY. A deleted chunk is the checkpoint: what is on disk is
  what is not known to be in Kafka.

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
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from app.core import DeliveryObserver, Record, Refusal, sized
from app.observability.metrics import Metrics
from app.spool.store import Appended, Chunk, Opened, SpoolCorrupt, SpoolError, Store

log = logging.getLogger(__name__)

READ_BATCH: Final = 2000
DELETE_EVERY: Final = 0.1
OLDEST_EVERY: Final = 1.0
FEED_WAIT: Final = 0.05
FREE_SPACE_EVERY: Final = 1.0
WRITER_STOP_WAIT: Final = 30.0
# Group commit: appends that come within this long of the oldest one queued share its commit (and
# its fsync), unless GROUP_RECORDS are queued first. Measured from when the oldest was queued, so a
# writer that is behind never waits: only a lone request at a low rate pays it, a few milliseconds.
GROUP_WINDOW: Final = 0.002
GROUP_RECORDS: Final = 2000


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
    queued: float = field(default_factory=time.monotonic)
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None


@dataclass(slots=True)
class _SetAside:
    """Damaged chunks a read met, for the writer to delete."""

    seqs: list[int]
    lost: int
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True)
class _Salvage:
    """The database reads back damaged: for the writer to quarantine it and keep what reads whole."""

    error: str
    done: trio.Event = field(default_factory=trio.Event)


class _Stop:
    """The last request to the writer: delete what was settled, then end."""


@dataclass(frozen=True, slots=True)
class _Report:
    """What the writer did in one transaction, for the trio thread: the appends it committed (or
    failed, with ``error``), where their records went, the chunks it deleted, what it dropped
    (records, bytes, highest seq), and the spool's records, bytes and oldest time after it."""

    appends: list[_Append]
    appended: Appended | None
    deleted: list[_Chunk]
    dropped: tuple[int, int, int] | None
    events: int
    bytes: int
    oldest: float | None
    seconds: float
    error: str | None = None


class _Chunk:
    """A chunk of the store (records ``seq`` to ``end - 1``, ``size`` bytes) as the feeder and the
    deleter follow it: which ranges of its records Kafka settled. One object per chunk, registered
    in its spool from the moment one of its records may be handed until the chunk is deleted."""

    __slots__ = ("spool", "seq", "count", "size", "settled", "complete")

    def __init__(self, spool: Spool, seq: int, count: int, size: int) -> None:
        self.spool = spool
        self.seq = seq
        self.count = count
        self.size = size
        self.settled: list[tuple[int, int]] = []  # (first, end) of handed parts whose every record was settled
        self.complete = False

    @property
    def end(self) -> int:
        return self.seq + self.count

    def part_settled(self, first: int, end: int) -> None:
        if self.complete:
            return
        if first == self.seq and end == self.end:
            self.complete = True  # handed whole (the usual case)
        else:
            self.settled = _merged([*self.settled, (first, end)])
            self.complete = self.settled == [(self.seq, self.end)]
        if self.complete:
            self.spool._complete(self)

    def unsettled(self, start: int) -> list[tuple[int, int]]:
        """The ranges (first, end) of its records from ``start`` on not yet settled, in order."""
        runs, position = [], max(start, self.seq)
        for first, end in self.settled:
            if end <= position:
                continue
            if first > position:
                runs.append((position, first))
            position = max(position, end)
        if position < self.end:
            runs.append((position, self.end))
        return runs


class _Part:
    """Records handed together, of one chunk and with consecutive seqs: each one's fate counts
    here (settled: delivered, to its topic or its dead-letter topic, or lost for good), and once
    all are, their chunk knows. Counting per handing, not per record: a record handed twice
    (after a rewind) is in two parts, each counting its own."""

    __slots__ = ("chunk", "first", "count", "settled")

    def __init__(self, chunk: _Chunk, first: int, count: int) -> None:
        self.chunk = chunk
        self.first = first
        self.count = count
        self.settled = 0

    def delivered_to(self, dead_letter_topic: bool) -> None:
        self.settled += 1
        if self.settled == self.count:
            self.chunk.part_settled(self.first, self.first + self.count)

    def refused(self) -> None:
        pass  # its dead letter settles it

    def lose(self) -> None:
        # Refused for good and its dead letter too: counted lost by the profile; off the spool.
        self.delivered_to(False)

    def undelivered(self) -> None:
        """Kafka did not take a record of it in time: it stays spooled, and the part is handed again."""
        self.chunk.spool._rewind(self.first)


class _Then:
    """A record's settlement when it had an observer of its own before (an acknowledgement, a
    trace): both hear of its fate."""

    __slots__ = ("_part", "_then")

    def __init__(self, part: _Part, then: DeliveryObserver) -> None:
        self._part = part
        self._then = then

    def delivered_to(self, dead_letter_topic: bool) -> None:
        self._part.delivered_to(dead_letter_topic)
        self._then.delivered_to(dead_letter_topic)

    def refused(self) -> None:
        self._then.refused()

    def lose(self) -> None:
        self._part.lose()
        self._then.lose()

    def undelivered(self) -> None:
        self._part.undelivered()


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, end in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    return merged


# Records to hand, all of one chunk and with consecutive seqs: the chunk, the first seq, the
# records, and their bytes when known (a whole chunk's).
_Handing = tuple[_Chunk, int, list[Record], int | None]


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
        self._queue_limit = queue
        self._limiter = trio.CapacityLimiter(1)  # the feeder's reads, in a worker thread
        self._closed = False
        self._wake_feeder = trio.Event()
        # The newest appends' chunks and records, in seq order, while the feeder is caught up with the disk.
        self._copy: collections.deque[tuple[_Chunk, list[Record]]] = collections.deque()
        self._copied = 0  # records in the copy
        self._copying = False
        self._copy_limit = memory_copy_events
        self._handed = 0  # the highest seq handed to the profile (the writer notes it in the database)
        self._appended = 0  # the highest seq committed
        # By first seq: the chunks whose records may be handed, until deleted (or dropped). A
        # settled chunk counts only when registered here, so a chunk is deleted once.
        self._chunks: dict[int, _Chunk] = {}
        self.events = 0
        self.bytes = 0
        self._queued = 0  # appends handed to the writer, not yet answered
        self._queued_bytes = 0
        self._drained = trio.Event()  # closed, and every append answered
        self._oldest: float | None = None  # when the oldest spooled chunk was appended
        self._free = math.inf
        self._free_at = -math.inf
        self.failure: str | None = None
        self.quarantined = 0  # events set aside as damaged by this run
        self.quarantine_files = 0  # damaged files kept in the quarantine folder, by this run or earlier ones
        # The writer thread's side: its requests, and what only it reads and writes.
        self._requests: SimpleQueue[_Append | _Chunk | _SetAside | _Salvage | _Stop] = SimpleQueue()
        self._writer_ended = trio.Event()
        self._writer_error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._w_events = 0
        self._w_bytes = 0
        self._w_oldest: float | None = None
        self._w_oldest_at = -math.inf
        self._w_dropped_through = 0
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
        if self._closed or self._writer_ended.is_set():
            raise Refusal(503, "shutting down", "this instance is shutting down", headers={"Retry-After": self._retry_after})
        if not self._drop_oldest and self.bytes + self._queued_bytes + size > self._max_bytes:
            self._metrics.rejected.labels(self.name, "spool full").inc(len(records))
            raise Refusal(
                503, "spool full", f"the {self.name} spool holds {self.bytes} bytes of its {self._max_bytes}; retry later",
                headers={"Retry-After": self._retry_after},
            )
        if self._min_free and self._free_space() - size < self._min_free:  # 0: no floor, a full disk fails the write
            self._metrics.rejected.labels(self.name, "disk full").inc(len(records))
            raise Refusal(
                503, "spool full", f"the {self.name} spool's file system is below its free-space floor; retry later",
                headers={"Retry-After": self._retry_after},
            )
        if not records:
            return
        if self._queued >= self._queue_limit:
            raise Refusal(
                503, "spool busy", f"the {self.name} spool has {self._queued} writes queued",
                headers={"Retry-After": self._retry_after},
            )
        request = _Append(records, size)
        self._queued += 1
        self._queued_bytes += size
        self._requests.put(request)
        # Not cancellable from here: once queued, the request's fate is the group's.
        with trio.CancelScope(shield=True):
            await request.done.wait()
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

    def notice(self) -> str | None:
        """What ``/ready`` reports without being unready: damaged spool data set aside.

        Not a reason to be unready: the damaged records are out of the way (in the quarantine
        folder), the stream takes and delivers new events as before, and taking the instance out
        of a load balancer would not bring them back; it would only turn damage to old data into
        an outage. An operator learns of it here, on the status page, from the metric
        ``spool_quarantined_events_total`` and from the log.
        """
        if not self.quarantined and not self.quarantine_files:
            return None
        return (
            f"{self.name} spool: {self.quarantined} damaged events set aside since start; "
            f"{self._store.quarantine} holds {self.quarantine_files} damaged files; the rest is delivered"
        )

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
            if not self._queued:
                self._drained.set()
            self._wake_feeder.set()

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store (salvaging a damaged one), then write, feed and delete until closed."""
        opened = await trio.to_thread.run_sync(self._store.open, limiter=self._limiter)
        self.quarantine_files = await trio.to_thread.run_sync(self._store.quarantined_files, limiter=self._limiter)
        self._opened(opened)
        self._token = trio.lowlevel.current_trio_token()
        trio.lowlevel.start_thread_soon(self._write, lambda _: None, name=f"{self.name} spool writer")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._feeder)
                task_status.started()
                await self._drained.wait()  # closed, and every queued append answered
                if self._writer_error is None:
                    # The feeder stops; the writer deletes on while the profile drains what it was
                    # handed, so what Kafka acknowledged by then is not sent again at the next start.
                    self._wake_feeder.set()
                    with trio.move_on_after(self._flush_timeout + 5.0):
                        await self._profile.stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self._requests.put(_Stop())
                with trio.move_on_after(WRITER_STOP_WAIT):
                    await self._writer_ended.wait()
                if self._writer_ended.is_set():
                    await trio.to_thread.run_sync(self._store.close, limiter=self._limiter)
        if self._writer_error is not None:
            raise self._writer_error

    def _opened(self, opened: Opened) -> None:
        self.events, self.bytes = opened.events, opened.bytes
        self._w_events, self._w_bytes = opened.events, opened.bytes
        self._oldest = self._w_oldest = opened.oldest
        self._appended = opened.last
        if opened.quarantined:
            self.quarantined = opened.quarantined
            self._metrics.spool_quarantined.labels(self.name).inc(opened.quarantined)
            log.error(
                "%s spool: %d damaged records quarantined in %s; the rest is delivered",
                self.name, opened.quarantined, self._store.quarantine, extra={"service": self.name},
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

    # -- the writer thread -------------------------------------------------------------------

    def _write(self) -> None:
        """The writer thread's loop: requests in the order they came, settled chunks deleted with
        the next commit or once they waited DELETE_EVERY. Blocking; reports to the trio thread."""
        try:
            deletes: list[_Chunk] = []
            deletes_since = 0.0
            while True:
                timeout = max(0.0, deletes_since + DELETE_EVERY - time.monotonic()) if deletes else None
                try:
                    requests = [self._requests.get(timeout=timeout)]
                except Empty:
                    requests = []
                self._gather(requests)
                appends: list[_Append] = []
                stop = False
                for request in requests:
                    if isinstance(request, _Append):
                        appends.append(request)
                    elif isinstance(request, _Chunk):
                        if not deletes:
                            deletes_since = time.monotonic()
                        deletes.append(request)
                    elif isinstance(request, _SetAside):
                        self._set_aside(request)
                    elif isinstance(request, _Salvage):
                        deletes = []  # the trio side forgets every chunk it followed
                        self._salvage(request)
                    else:
                        stop = True
                if appends or stop or (deletes and time.monotonic() - deletes_since >= DELETE_EVERY):
                    deletes = self._transaction(appends, deletes, always=stop)
                if stop:
                    return
        except BaseException as error:  # a bug: the trio thread answers what waits and raises it
            self._writer_error = error
        finally:
            self._report_soon(self._writer_stopped)

    def _gather(self, requests: list[_Append | _Chunk | _SetAside | _Salvage | _Stop]) -> None:
        """Add what is queued to ``requests``; while they hold appends, fewer than GROUP_RECORDS
        records and the oldest was queued less than GROUP_WINDOW ago, wait for more. Blocking."""
        appends = [request for request in requests if isinstance(request, _Append)]
        records = sum(len(request.records) for request in appends)
        oldest = appends[0].queued if appends else None  # the queue is in order
        stopping = any(isinstance(request, _Stop) for request in requests)
        while True:
            try:
                request = self._requests.get_nowait()
            except Empty:
                wait = 0.0 if oldest is None or stopping or records >= GROUP_RECORDS else oldest + GROUP_WINDOW - time.monotonic()
                if wait <= 0:
                    return
                try:
                    request = self._requests.get(timeout=wait)
                except Empty:
                    return
            requests.append(request)
            if isinstance(request, _Append):
                records += len(request.records)
                oldest = request.queued if oldest is None else oldest
            stopping = stopping or isinstance(request, _Stop)

    def _transaction(self, appends: list[_Append], deletes: list[_Chunk], *, always: bool) -> list[_Chunk]:
        """Commit ``appends`` and delete ``deletes`` in one transaction (with ``always``, note how
        far records were handed even with nothing else to do); the deletes still to do. Blocking."""
        started = time.perf_counter()
        size = sum(request.size for request in appends)
        dropped = None
        appended = None
        try:
            excess = self._w_bytes + size - self._max_bytes if self._drop_oldest and appends else 0
            if excess > 0:
                count, dropped_bytes, through, oldest = self._store.drop_oldest(excess)
                if count:
                    dropped = (count, dropped_bytes, through)
                    self._w_events -= count
                    self._w_bytes -= dropped_bytes
                    self._w_dropped_through = max(self._w_dropped_through, through)
                    self._w_oldest, self._w_oldest_at = oldest, time.monotonic()
            deletes = [chunk for chunk in deletes if chunk.seq > self._w_dropped_through]
            seqs = [chunk.seq for chunk in deletes]
            created = time.time()
            if appends:
                batches = [
                    ([(r.key, r.value, r.headers) for r in request.records], request.size) for request in appends
                ]
                appended = self._store.append(batches, created, delete=seqs, handed_through=self._handed)
            elif deletes or always:
                self._store.delete(seqs, self._handed)
        except SpoolError as error:
            self._report(appends, None, [], dropped, started, str(error))
            return deletes  # kept for the next transaction: a chunk is deleted only once its deletion commits
        was_empty = self._w_events == 0
        self._w_events += sum(len(request.records) for request in appends) - sum(chunk.count for chunk in deletes)
        self._w_bytes += size - sum(chunk.size for chunk in deletes)
        if self._w_events <= 0:
            self._w_oldest = None
        elif was_empty:
            self._w_oldest = created
        elif deletes and time.monotonic() - self._w_oldest_at >= OLDEST_EVERY:
            # A gauge: read again at most once a second, not on every commit.
            try:
                self._w_oldest, self._w_oldest_at = self._store.oldest(), time.monotonic()
            except SpoolError:
                pass
        self._report(appends, appended, deletes, dropped, started, None)
        return []

    def _report(
        self, appends: list[_Append], appended: Appended | None, deleted: list[_Chunk],
        dropped: tuple[int, int, int] | None, started: float, error: str | None,
    ) -> None:
        report = _Report(
            appends, appended, deleted, dropped, self._w_events, self._w_bytes, self._w_oldest,
            time.perf_counter() - started, error,
        )
        self._report_soon(lambda: self._committed(report))

    def _report_soon(self, callback: Callable[[], None]) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(callback)
        except trio.RunFinishedError:
            pass  # the trio run is over: nobody waits any more

    def _set_aside(self, request: _SetAside) -> None:
        try:
            self._store.set_aside(request.seqs, request.lost)
            self._w_events, self._w_bytes = self._store.totals()
        except SpoolError as error:
            log.error("%s spool: damaged records could not be set aside: %s", self.name, error)
        events, size = self._w_events, self._w_bytes
        self._report_soon(lambda: self._counted(events, size, request.done))

    def _salvage(self, request: _Salvage) -> None:
        log.error("%s spool: %s; quarantining it and keeping what reads back whole", self.name, request.error)
        try:
            lost = self._store.salvage()
            opened = self._store.reopened()
        except SpoolError as error:
            log.error("%s spool: salvage failed: %s", self.name, error)
            self._report_soon(request.done.set)
            return
        self._w_events, self._w_bytes, self._w_oldest = opened.events, opened.bytes, opened.oldest
        self._report_soon(lambda: self._salvaged(opened, lost, request.done))

    # -- the writer's reports (trio thread) ----------------------------------------------------

    def _committed(self, report: _Report) -> None:
        if report.dropped is not None:
            self._dropped(*report.dropped)
        self.events, self.bytes, self._oldest = report.events, report.bytes, report.oldest
        for chunk in report.deleted:
            if self._chunks.get(chunk.seq) is chunk:
                del self._chunks[chunk.seq]
        self._queued -= len(report.appends)
        self._queued_bytes -= sum(request.size for request in report.appends)
        if report.error is not None:
            self._metrics.spool_write_errors.labels(self.name).inc()
            self.failure = report.error
            log.error("%s spool: a write failed: %s", self.name, report.error, extra={"service": self.name})
            for request in report.appends:
                request.error = report.error
                request.done.set()
        elif report.appended is not None:
            self._metrics.spool_fsync_duration.labels(self.name).observe(report.seconds)
            self.failure = None
            self._appended = report.appended.first + sum(len(request.records) for request in report.appends) - 1
            for request in report.appends:
                request.done.set()
            if self._copying:
                self._copy_appended(report.appends, report.appended)
            self._wake_feeder.set()
        if self._closed and not self._queued:
            self._drained.set()

    def _copy_appended(self, appends: list[_Append], appended: Appended) -> None:
        # A chunk holds whole requests (store.append puts them together): their record lists.
        requests = iter(appends)
        for first, count, size in appended.chunks:
            records = next(requests).records
            while len(records) < count:
                records = records + next(requests).records
            self._copy.append((_Chunk(self, first, count, size), records))
            self._copied += count
        if self._copied > self._copy_limit:
            # Kafka is slower than the appends: the copy is given up until the feeder catches up from disk.
            self._forget_copy()

    def _forget_copy(self) -> None:
        self._copy.clear()
        self._copied = 0
        self._copying = False

    def _dropped(self, dropped: int, dropped_bytes: int, through: int) -> None:
        for seq in [seq for seq in self._chunks if seq <= through]:
            del self._chunks[seq]
        self._metrics.spool_dropped.labels(self.name).inc(dropped)
        log.warning(
            "%s spool: full; dropped its %d oldest events (%d bytes) to take new ones", self.name, dropped, dropped_bytes,
            extra={"service": self.name, "count": dropped},
        )
        self._forget_copy()

    def _counted(self, events: int, size: int, done: trio.Event) -> None:
        self.events, self.bytes = events, size
        done.set()

    def _salvaged(self, opened: Opened, lost: int, done: trio.Event) -> None:
        self._quarantine(lost)
        self.events, self.bytes, self._oldest = opened.events, opened.bytes, opened.oldest
        self._handed, self._appended = 0, max(self._appended, opened.last)
        self._chunks.clear()  # what was in flight counts nothing: it is handed again
        self._forget_copy()
        done.set()

    def _writer_stopped(self) -> None:
        """The writer thread ended: at the last request, or by a bug (then nothing it held is answered 202)."""
        self._writer_ended.set()
        if self._writer_error is None:
            return
        log.error("%s spool: the writer thread failed", self.name, exc_info=self._writer_error)
        self.failure = f"the writer failed: {self._writer_error!r}"
        while True:
            try:
                request = self._requests.get_nowait()
            except Empty:
                break
            if isinstance(request, _Append):
                request.error = self.failure
                request.done.set()
            elif isinstance(request, (_SetAside, _Salvage)):
                request.done.set()
        self._queued = self._queued_bytes = 0
        self._drained.set()

    # -- the feeder --------------------------------------------------------------------------

    async def _feeder(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self._closed:
            events, size_free = self._profile.room()
            if events <= 0 or size_free <= 0:
                await trio.sleep(FEED_WAIT)  # the profile's bound, or its breaker: the records wait on disk
                continue
            # Before looking: a commit that lands while the feeder looks wakes it.
            wake = self._wake_feeder = trio.Event()
            parts = await self._next_parts(min(READ_BATCH, events))
            if self._closed:
                return
            records, size = self._hand(parts, size_free)
            if not records:
                with trio.move_on_after(FEED_WAIT):
                    await wake.wait()
                continue
            self._profile.submit(records, size)

    def _hand(self, parts: list[_Handing], size_free: int) -> tuple[list[Record], int]:
        """The records of ``parts`` the profile's bound in bytes takes (the rest comes again next
        round), each with its settlement, and their bytes; the cursor moves past them."""
        records: list[Record] = []
        size = 0
        for chunk, first, part, part_size in parts:
            if part_size is None:
                part_size = sized(part)
            full = size + part_size > size_free
            if full:
                taken = 0
                for record in part:
                    if size + record.size > size_free:
                        break
                    size += record.size
                    taken += 1
                part = part[:taken]
            else:
                size += part_size
            if part:
                handed = _Part(chunk, first, len(part))
                for record in part:
                    then = record.settlement
                    record.settlement = handed if then is None else _Then(handed, then)
                records += part
                self._handed = first + len(part) - 1
            if full:
                break
        return records, size

    async def _next_parts(self, limit: int) -> list[_Handing]:
        """Up to ``limit`` next records to hand, in seq order: from the copy when it continues the
        cursor (looked at, not taken: the feeder takes what it hands), else from disk."""
        copy, handed = self._copy, self._handed
        while copy and copy[0][0].end <= handed + 1:
            self._copied -= copy.popleft()[0].count
        if copy and copy[0][0].seq <= handed + 1:
            return self._from_copy(limit)
        if not copy and handed >= self._appended:
            # Everything committed was handed: what the next commits bring continues the cursor.
            self._copying = True
            return []
        appended = self._appended
        try:
            read = await trio.to_thread.run_sync(self._store.read, handed, limit, limiter=self._limiter)
        except SpoolCorrupt as error:
            await self._ask_writer(_Salvage(str(error)))
            self.quarantine_files = await trio.to_thread.run_sync(self._store.quarantined_files, limiter=self._limiter)
            return []
        except SpoolError as error:
            self.failure = str(error)
            log.error("%s spool: a read failed: %s", self.name, error, extra={"service": self.name})
            await trio.sleep(1.0)
            return []
        chunks, damaged, lost = read
        if damaged:
            log.error(
                "%s spool: %d records failed their checksum; set aside in %s", self.name, lost, self._store.quarantine
            )
            self._quarantine(lost)
            await self._ask_writer(_SetAside(damaged, lost))
            self.quarantine_files = await trio.to_thread.run_sync(self._store.quarantined_files, limiter=self._limiter)
            return []  # read again, without them
        if self._handed != handed:
            return []  # rewound while reading: read again from the new cursor
        copy_start = copy[0][0].seq if copy else None
        parts = self._from_disk(chunks, handed, limit, copy_start)
        if parts:
            self._metrics.spool_replayed.labels(self.name).inc(sum(len(part[2]) for part in parts))
            return parts
        ahead = [chunk for chunk in chunks if chunk.end - 1 > handed and (copy_start is None or chunk.seq < copy_start)]
        if ahead:
            # Only records Kafka settled already (handed again after a rewind): past them.
            self._handed = ahead[-1].end - 1
        elif copy_start is not None:
            self._handed = copy_start - 1  # nothing on disk before the copy
        else:
            # Nothing on disk after the cursor: what was committed before this read is gone (deleted).
            self._handed = max(handed, appended)
        return []

    async def _ask_writer(self, request: _SetAside | _Salvage) -> None:
        if self._writer_ended.is_set():
            return
        self._requests.put(request)
        with trio.CancelScope(shield=True):  # the writer answers every request
            await request.done.wait()

    def _from_copy(self, limit: int) -> list[_Handing]:
        parts: list[_Handing] = []
        next_seq, taken = self._handed + 1, 0
        for copied, records in self._copy:
            if copied.seq > next_seq:
                break
            chunk = self._chunks.setdefault(copied.seq, copied)
            start = next_seq - copied.seq
            count = min(copied.count - start, limit - taken)
            if count == copied.count:
                parts.append((chunk, next_seq, records, copied.size))
            else:
                parts.append((chunk, next_seq, records[start:start + count], None))
            next_seq += count
            taken += count
            if taken >= limit:
                break
        return parts

    def _from_disk(self, chunks: list[Chunk], after: int, limit: int, copy_start: int | None) -> list[_Handing]:
        """The records of chunks read back that are after ``after`` and before the copy, not yet
        settled, in runs of consecutive seqs."""
        parts: list[_Handing] = []
        taken = 0
        for stored in chunks:
            if copy_start is not None and stored.seq >= copy_start:
                break
            chunk = self._chunks.get(stored.seq)
            if chunk is None:
                chunk = self._chunks[stored.seq] = _Chunk(self, stored.seq, stored.count, stored.size)
            for first, end in chunk.unsettled(after + 1):
                end = min(end, first + limit - taken)
                stored_run = stored.records[first - stored.seq:end - stored.seq]
                run = [Record(key, value, headers) for key, value, headers in stored_run]
                parts.append((chunk, first, run, stored.size if len(run) == stored.count else None))
                taken += len(run)
                if taken >= limit:
                    return parts
        return parts

    def _quarantine(self, count: int) -> None:
        if count:
            self.quarantined += count
            self._metrics.spool_quarantined.labels(self.name).inc(count)

    def _rewind(self, seq: int) -> None:
        """A handed record came back undelivered: hand everything from it again, read from disk."""
        if seq <= self._handed:
            self._handed = min(self._handed, seq - 1)
            self._forget_copy()
            self._wake_feeder.set()

    def _complete(self, chunk: _Chunk) -> None:
        """Kafka settled every record of ``chunk``: the writer deletes it (unless dropped or forgotten)."""
        if self._chunks.get(chunk.seq) is chunk:
            self._requests.put(chunk)


__all__: Sequence[str] = ("Spool",)
