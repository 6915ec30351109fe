"""Group commit: concurrent requests share one PostgreSQL transaction.

A handler hands its entries to :meth:`OutboxWriter.write` and waits (with a deadline) for
the commit. The writer task takes whatever requests are queued, up to a group size, and
commits them together, so throughput grows with concurrency instead of being bounded by
one fsync per request. The queue is bounded: a full queue, a backlog past its limit or an
unreachable database is answered at once, never by waiting longer.

A group PostgreSQL refuses for what it holds (not for an outage) is committed again one request
at a time, so that only the requests refused fail, with :class:`OutboxError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from app.db import outbox as store
from app.db.database import DatabaseError, DatabaseUnavailable
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog

log = logging.getLogger(__name__)


class OutboxUnavailable(Exception):
    """The outbox cannot take the request now (database away, backlog or queue full): retry later (503)."""


class OutboxError(Exception):
    """PostgreSQL refused the request or lookup for what it is, not for an outage: a bug (500), not worth a retry."""


# What one request of a group came to: its result, or why it was not committed.
_Outcome = store.RequestResult | DatabaseUnavailable | DatabaseError


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
        schema_ready: trio.Event,
        max_group_events: int,
        max_queue: int,
        max_queue_bytes: int,
        write_timeout: float,
    ) -> None:
        self._url = url
        self._backlog = backlog
        self._schema_ready = schema_ready
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
        """Commit ``entries`` (all or none).

        Raises OutboxUnavailable (the database is away, slow or not migrated yet, the queue or
        backlog is full: retry later), RetryableConflict (retry at once), IdempotencyConflict
        (the key was used with another body), or OutboxError (PostgreSQL refused the request
        itself: a bug, to answer 500).
        """
        if not self._schema_ready.is_set():
            raise OutboxUnavailable("database unavailable: the schema is not migrated yet (see /ready)")
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
                    await self._commit(group)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                # Each connection is closed under its own limiter, so never while a thread uses it; abandoned
                # past the bound, as nothing uses either connection again.
                await trio.to_thread.run_sync(self._close_writer, limiter=self._limiter, abandon_on_cancel=True)
                await trio.to_thread.run_sync(self._close_reader, limiter=self._reader_limiter, abandon_on_cancel=True)

    def _close_writer(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _close_reader(self) -> None:
        conn, self._reader = self._reader, None
        if conn is not None:
            conn.close()

    async def _commit(self, group: list[_Request]) -> None:
        started = trio.current_time()
        try:
            # No deadline: connect_timeout, statement_timeout and tcp_user_timeout bound the call inside, and
            # it is not abandoned, since its results must reach the requests and its connection is used again.
            outcomes: list[_Outcome] = await trio.to_thread.run_sync(
                self._commit_sync, [r.entries for r in group], limiter=self._limiter
            )
        except (DatabaseUnavailable, DatabaseError) as error:
            outcomes = [error] * len(group)
        committed = 0
        unavailable: list[DatabaseUnavailable] = []
        refused: dict[str, int] = {}
        for request, outcome in zip(group, outcomes):
            if isinstance(outcome, DatabaseUnavailable):
                request.result = OutboxUnavailable(f"database unavailable: {outcome}")
                unavailable.append(outcome)
            elif isinstance(outcome, DatabaseError):
                request.result = OutboxError(f"the outbox refused the request: {outcome}")
                refused[str(outcome)] = refused.get(str(outcome), 0) + 1
            else:
                request.result = outcome
                committed += len(request.entries)
        if unavailable:
            log.warning("outbox commit of %d requests failed: %s", len(unavailable), unavailable[0])
        for message, count in refused.items():
            log.error("outbox commit of %d requests refused by PostgreSQL (a bug, answered 500): %s", count, message)
            self._metrics.outbox_errors.labels("write").inc(count)
        if committed:
            self._backlog.committed(committed)
            self._metrics.outbox_commits.observe(committed)
            self._metrics.outbox_commit_duration.observe(trio.current_time() - started)
        for request in group:
            request.done.set()

    def _commit_sync(self, requests: list[Sequence[store.OutboxEntry]]) -> list[_Outcome]:
        try:
            return list(self._commit_on_connection(requests))
        except DatabaseError:
            if len(requests) == 1:
                raise
        # One request may be what PostgreSQL refused: each alone, so that only the refused ones fail.
        outcomes: list[_Outcome] = []
        for index, request in enumerate(requests):
            try:
                outcomes.extend(self._commit_on_connection([request]))
            except DatabaseError as error:
                outcomes.append(error)
            except DatabaseUnavailable as error:  # the rest are not tried: they would wait for the same outage
                outcomes.extend([error] * (len(requests) - index))
                break
        return outcomes

    def _commit_on_connection(self, requests: list[Sequence[store.OutboxEntry]]) -> list[store.RequestResult]:
        if self._conn is None or self._conn.closed:
            self._conn = store.connect(self._url, timeout=self._write_timeout)
        try:
            return store.commit_group(self._conn, requests)
        except DatabaseUnavailable:
            self._conn.close()
            self._conn = None
            raise

    async def status(self, event_id: Any) -> store.EventStatus | None:
        """Where an event stands (pending or published).

        Raises DatabaseUnavailable (away, or no answer within twice the write timeout: 503) or
        OutboxError (PostgreSQL refused the lookup itself: a bug, answered 500).
        """

        def look_up() -> store.EventStatus | None:
            if self._reader is None or self._reader.closed:
                self._reader = store.connect(self._url, timeout=self._write_timeout)
            try:
                return store.event_status(self._reader, event_id)
            except DatabaseUnavailable:
                self._reader.close()
                self._reader = None
                raise

        if not self._schema_ready.is_set():
            raise DatabaseUnavailable("the database schema is not migrated yet")
        deadline = self._write_timeout * 2  # finite: the settings refuse any other
        try:
            # Bounds the wait for the reader and the lookup itself: an abandoned lookup's answer is discarded, and
            # it keeps the limiter until it ends, so no other lookup uses the reader meanwhile.
            with trio.fail_after(deadline):
                return await trio.to_thread.run_sync(look_up, limiter=self._reader_limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise DatabaseUnavailable(f"no answer within {deadline:g}s") from None
        except DatabaseError as error:
            log.error("outbox status lookup refused by PostgreSQL (a bug, answered 500): %s", error)
            self._metrics.outbox_errors.labels("status").inc()
            raise OutboxError(f"the outbox refused the lookup: {error}") from None
