"""The relay: publishes pending outbox rows to Kafka, exactly once.

One relay leads per database: the instance whose dedicated connection holds a PostgreSQL
session advisory lock. If that instance dies, its session ends, the lock is released and a
standby takes over within its poll interval.

The leader opens a transactional producer with the relay's fixed ``transactional.id``
(fencing any older leader), reads the last committed checkpoint from Kafka and marks those
rows published, then loops: read pending rows in id order, publish them and their checkpoint
in one Kafka transaction, mark them published. Rows of one transaction are marked before the
next transaction begins, so after a crash only the rows of the last committed transaction
can be published-but-unmarked, and the checkpoint names exactly those. Rows whose
transaction did not commit are aborted by the fencing and published again. A read_committed
consumer therefore sees every row once. On any failure the leader gives up its producer and
its lock, backs off, and starts over from the checkpoint.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from functools import partial
from typing import Any

import trio

from app.db import outbox as store
from app.db.database import DatabaseError, DatabaseUnavailable
from app.kafka.errors import KafkaConfigError, KafkaError
from app.kafka.transactional import OutgoingRecord, TransactionalPublisher
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog

log = logging.getLogger(__name__)


class RelayState(enum.Enum):
    STANDBY = "standby"
    LEADING = "leading"
    FAILING = "failing"


class Relay:
    def __init__(
        self,
        url: str,
        producer_config: dict[str, Any],
        backlog: Backlog,
        metrics: Metrics,
        *,
        schema_ready: trio.Event,
        transactional_id: str,
        checkpoint_topic: str,
        batch_size: int,
        poll_interval: float,
        kafka_timeout: float,
        retention: dt.timedelta,
    ) -> None:
        self._url = url
        self._producer_config = producer_config
        self._backlog = backlog
        self._schema_ready = schema_ready
        self._metrics = metrics
        self._transactional_id = transactional_id
        self._checkpoint_topic = checkpoint_topic
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._kafka_timeout = kafka_timeout
        self._retention = retention
        self._limiter = trio.CapacityLimiter(1)
        self._conn: Any = None
        self._publisher: TransactionalPublisher | None = None
        self._next_stats = 0.0
        self._next_purge = 0.0
        self._reported: str | None = None  # the last persistent failure logged
        self.state = RelayState.STANDBY
        for state in RelayState:
            metrics.outbox_relay_state.labels(state.value).set_function(partial(self._is_in, state))
        metrics.kafka_statistics.watch("transaction", self._statistics)

    def _statistics(self) -> str | None:
        return self._publisher.statistics if self._publisher is not None else None

    def _is_in(self, state: RelayState) -> float:
        return 1.0 if self.state is state else 0.0

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(self._conn, *args), limiter=self._limiter)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lead or stand by, publishing while leading, until cancelled; starts once the schema is migrated."""
        task_status.started()
        # Every step reads the outbox table: none before the migrations created it. (A cancellable wait.)
        await self._schema_ready.wait()
        backoff = 0.5
        while True:
            try:
                await self._serve()
            except DatabaseError as error:
                self._failed()
                self._metrics.outbox_errors.labels("relay").inc()
                self._report_once(f"PostgreSQL refused a statement (a bug, not an outage): {error}")
            except KafkaConfigError as error:
                self._failed()
                self._report_once(f"the Kafka client configuration is refused: {error}")
            except (DatabaseUnavailable, KafkaError) as error:
                if self.state is RelayState.LEADING:
                    backoff = 0.5
                self._failed()
                log.warning("outbox relay: %s (starting over in %.1fs)", error, backoff)
            except Exception:
                # Starting over from the checkpoint is always safe; taking the process down is not needed.
                self._failed()
                log.exception("outbox relay: unexpected error (starting over in %.1fs)", backoff)
            finally:
                await self._close()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _failed(self) -> None:
        self.state = RelayState.FAILING
        self._metrics.outbox_publish_failures.inc()

    def _report_once(self, message: str) -> None:
        # Starting over does not fix this by itself: said once per distinct message, not at every retry.
        if message != self._reported:
            self._reported = message
            log.error("outbox relay: %s (starting over every few seconds until it is fixed)", message)

    async def _close(self) -> None:
        self._publisher = None  # a discarded producer's statistics are not the relay's
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def _serve(self) -> None:
        self._conn = await trio.to_thread.run_sync(
            lambda: store.connect(self._url, timeout=self._kafka_timeout), limiter=self._limiter
        )
        await self._refresh_stats(force=True)
        if self.state is not RelayState.FAILING:
            self.state = RelayState.STANDBY
        while not await self._db(store.try_lead):
            await self._refresh_stats()
            await trio.sleep(self._poll_interval)
        log.info("outbox relay: leading (transactional.id %s)", self._transactional_id)
        publisher = await trio.to_thread.run_sync(
            lambda: TransactionalPublisher(
                self._producer_config,
                transactional_id=self._transactional_id,
                checkpoint_topic=self._checkpoint_topic,
            ),
            limiter=self._limiter,
        )
        self._publisher = publisher
        checkpoint = await trio.to_thread.run_sync(publisher.open, self._kafka_timeout, limiter=self._limiter)
        if checkpoint is not None:
            recovered = await self._db(store.mark_published, checkpoint.rows)
            if recovered:
                log.info("outbox relay: marked %d rows published from the Kafka checkpoint", recovered)
        self.state = RelayState.LEADING
        self._reported = None
        while True:
            await self._refresh_stats()
            await self._purge()
            committed_before = self._backlog.committed_events
            rows: list[store.PendingRow] = await self._db(store.pending, self._batch_size)
            if not rows:
                # New commits wake the relay at once, those made during the look above included.
                await self._backlog.wait_for_commits(committed_before, self._poll_interval)
                continue
            records = [OutgoingRecord(r.id, r.topic, r.key, r.payload, r.headers) for r in rows]
            positions = await trio.to_thread.run_sync(
                publisher.publish, records, self._kafka_timeout, limiter=self._limiter
            )
            await self._db(store.mark_published, positions)
            self._metrics.outbox_published.inc(len(positions))
            self._backlog.published(len(positions))

    async def _refresh_stats(self, *, force: bool = False) -> None:
        now = trio.current_time()
        if now < self._next_stats and not force:
            return
        self._next_stats = now + 1.0
        committed_before = self._backlog.committed_events
        count: store.Backlog = await self._db(store.backlog)
        self._backlog.counted(count.pending, committed_before)
        self._metrics.outbox_pending.set(count.pending)
        self._metrics.outbox_oldest_pending_age.set(count.oldest_pending_age)

    async def _purge(self) -> None:
        now = trio.current_time()
        if now < self._next_purge:
            return
        self._next_purge = now + 60.0
        purged = await self._db(store.purge_published, self._retention)
        if purged:
            log.info("outbox relay: purged %d published rows older than %s", purged, self._retention)
