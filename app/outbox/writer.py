"""Group commit: concurrent requests share one PostgreSQL transaction.

A handler hands its entries to :meth:`OutboxWriter.write` and waits (with a deadline) for
the commit. The writer task takes whatever requests are queued, up to a group size, and
commits them together, so throughput grows with concurrency instead of being bounded by
one fsync per request. The queue is bounded: a full queue, a backlog past its limit or an
unreachable database is answered at once, never by waiting longer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from app.db import outbox as store
from app.db.database import DatabaseUnavailable
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog

log = logging.getLogger(__name__)


class OutboxUnavailable(Exception):
    """The outbox cannot take the request now (database away, backlog or queue full)."""


@dataclass(slots=True)
class _Request:
    entries: Sequence[store.OutboxEntry]
    size: int  # bytes of keys and payloads, counted against the queue's byte bound
    done: trio.Event = field(default_factory=trio.Event)
    result: store.RequestResult | BaseException | None = None


class OutboxWriter:
    def __init__(
        self,
        url: str,
        backlog: Backlog,
        metrics: Metrics,
        *,
        max_group_events: int,
        max_queue: int,
        max_queue_bytes: int,
        write_timeout: float,
    ) -> None:
        self._url = url
        self._backlog = backlog
        self._metrics = metrics
        self._max_group_events = max_group_events
        self._write_timeout = write_timeout
        self._send, self._receive = trio.open_memory_channel[_Request](max_queue)
        self._max_queue_bytes = max_queue_bytes
        self.queued_bytes = 0
        self._limiter = trio.CapacityLimiter(1)
        self._conn: Any = None
        self._reader: Any = None
        self._reader_limiter = trio.CapacityLimiter(1)

    async def write(self, entries: Sequence[store.OutboxEntry]) -> list[store.Accepted]:
        """Commit ``entries`` (all or none); raises OutboxUnavailable or IdempotencyConflict."""
        if not self._backlog.admits(len(entries)):
            raise OutboxUnavailable(f"the outbox backlog is over its limit of {self._backlog.limit} events")
        request = _Request(entries, sum(len(entry.key) + len(entry.payload) for entry in entries))
        if self.queued_bytes + request.size > self._max_queue_bytes:
            raise OutboxUnavailable(f"the outbox write queue is full ({self._max_queue_bytes} bytes)")
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise OutboxUnavailable("the outbox write queue is full") from None
        self.queued_bytes += request.size
        with trio.move_on_after(self._write_timeout):
            await request.done.wait()
        result = request.result
        if result is None:
            raise OutboxUnavailable(f"the outbox did not commit within {self._write_timeout:.1f}s")
        if isinstance(result, (BaseException, store.IdempotencyConflict, store.RetryableConflict)):
            raise result
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with self._receive:
                async for first in self._receive:
                    group = [first]
                    events = len(first.entries)
                    while events < self._max_group_events:
                        try:
                            request = self._receive.receive_nowait()
                        except trio.WouldBlock:
                            break
                        group.append(request)
                        events += len(request.entries)
                    self.queued_bytes -= sum(request.size for request in group)
                    await self._commit(group, events)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(self._close_connections, limiter=self._limiter)

    def _close_connections(self) -> None:
        for conn in (self._conn, self._reader):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None

    async def _commit(self, group: list[_Request], events: int) -> None:
        started = trio.current_time()
        try:
            results = await trio.to_thread.run_sync(
                self._commit_sync, [r.entries for r in group], limiter=self._limiter
            )
        except DatabaseUnavailable as error:
            log.warning("outbox commit of %d requests failed: %s", len(group), error)
            for request in group:
                request.result = OutboxUnavailable(f"database unavailable: {error}")
        else:
            for request, result in zip(group, results):
                request.result = result
            self._backlog.committed(events)
            self._metrics.outbox_commits.observe(events)
            self._metrics.outbox_commit_duration.observe(trio.current_time() - started)
        for request in group:
            request.done.set()

    def _commit_sync(self, requests: list[Sequence[store.OutboxEntry]]) -> list[store.RequestResult]:
        if self._conn is None or self._conn.closed:
            self._conn = store.connect(self._url, timeout=self._write_timeout)
        try:
            return store.commit_group(self._conn, requests)
        except DatabaseUnavailable:
            self._conn.close()
            self._conn = None
            raise

    async def status(self, event_id: Any) -> store.EventStatus | None:
        """Where an event stands (pending or published); raises DatabaseUnavailable."""

        def look_up() -> store.EventStatus | None:
            if self._reader is None or self._reader.closed:
                self._reader = store.connect(self._url, timeout=self._write_timeout)
            try:
                return store.event_status(self._reader, event_id)
            except DatabaseUnavailable:
                self._reader.close()
                self._reader = None
                raise

        deadline = self._write_timeout * 2  # finite: the settings refuse any other
        try:
            with trio.fail_after(deadline):  # bounds the wait for the reader behind another lookup
                return await trio.to_thread.run_sync(look_up, limiter=self._reader_limiter)
        except trio.TooSlowError:
            raise DatabaseUnavailable(f"no answer within {deadline:g}s") from None
