"""One producer profile: a bounded buffer, its producer task, and the poll loop.

HTTP handlers call :meth:`ProducerProfile.submit`, which never waits: it accepts a
request's records into the bounded channel or refuses them at once. The bound counts every
event accepted and not yet settled by Kafka (in the channel, in librdkafka's queue, or in
flight), in events and in bytes, so it is the one place where backpressure is decided.

The producer task hands records to librdkafka on the trio thread (``produce`` does not
block); a poll loop serves delivery reports there too (``poll(0)`` does not block either) and
applies them. Only ``flush`` at shutdown and metadata requests wait, in worker threads.
Records Kafka refuses for good go to the profile's dead-letter topic with headers naming
the error and the original topic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from app.breaker import BreakerState, CircuitBreaker
from app.config import ProfileSettings
from app.kafka.errors import KafkaUnavailable
from app.core import Outcome, Record
from app.kafka.producer import Deliveries, Failure, Producer
from app.observability.metrics import Metrics

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05
# While records are out: librdkafka lingers 10 ms before it sends, so 5 ms adds little latency.
POLL_BUSY_INTERVAL = 0.005
READY_CACHE_SECONDS = 1.0
# At most one log line per second for one kind of failure: a failing broker at 50,000 events/s
# must not write a line per event. The lines count the events they stand for.
FAILURE_LOG_INTERVAL = 1.0


# Errors a dead letter cannot recover from by being sent again.
PERMANENT_ERRORS = frozenset(
    {
        "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_MSG", "INVALID_MSG_SIZE", "INVALID_RECORD",
        "RECORD_LIST_TOO_LARGE", "CORRUPT_MESSAGE", "TOPIC_AUTHORIZATION_FAILED", "UNKNOWN_TOPIC_OR_PART",
        "_UNKNOWN_TOPIC", "_INVALID_ARG",
    }
)

# The producer's own failures after a fatal error, not Kafka's verdict: the replacement producer
# sends these records again (to their topic, not to the dead-letter topic).
RESEND_ERRORS = frozenset({"_PURGE_QUEUE", "_FATAL"})


@dataclass(slots=True)
class Submission:
    records: list[Record]
    size: int
    accepted_at: float  # time.monotonic()


class ProducerProfile:
    """A named producer profile (application, infrastructure, transaction)."""

    def __init__(
        self,
        name: str,
        settings: ProfileSettings,
        producer: Producer,
        metrics: Metrics,
        *,
        flush_timeout: float,
        breaker: CircuitBreaker | None = None,
        recreate: Callable[[], Producer] | None = None,
        probe_timeout: float = 2.0,
        spooled: bool = False,
    ) -> None:
        self.name = name
        # Fed by a durable spool (a disk-mode stream): a record Kafka did not take in time goes back
        # to the spool, to be sent again, instead of to the dead-letter topic; what is unsettled at
        # shutdown stays spooled, not lost.
        self.spooled = spooled
        self.stopped = trio.Event()  # set once run() has drained and flushed
        self.settings = settings
        self.topic = settings.topic
        self.dead_letter_topic = settings.dead_letter_topic
        self._producer = producer
        self._retired: list[Producer] = []
        self._recreate = recreate
        self._probe_timeout = probe_timeout
        self.breaker = breaker or CircuitBreaker(failure_threshold=10, open_seconds=5.0, clock=trio.current_time)
        self._metrics = metrics
        self._flush_timeout = flush_timeout
        self._send, self._receive = trio.open_memory_channel[Submission](settings.buffer_events)
        self._closed = False
        self._drain_scope = trio.CancelScope()
        self._room = trio.Event()
        self._produced = trio.Event()
        self._pending_dead_letters: list[Record] = []
        self._pending_resends: list[Record] = []
        self._poll_limiter = trio.CapacityLimiter(1)
        self._probe_limiter = trio.CapacityLimiter(1)
        self._probe_at = -math.inf
        self._probe_result: str | None = "not probed yet"
        self.buffered_events = 0
        self.buffered_bytes = 0
        self.last_client_error: str | None = None
        metrics.buffer_events.labels(name).set_function(lambda: self.buffered_events)
        metrics.buffer_bytes.labels(name).set_function(lambda: self.buffered_bytes)
        metrics.buffer_fill.labels(name).set_function(self.fill)
        metrics.breaker_state.labels(name).set_function(lambda: self.breaker.state.value)
        metrics.kafka_statistics.watch(name, lambda: self._producer.statistics)
        # Exported at 0 from the start, so that increase() sees the first loss or dead letter.
        metrics.lost.labels(name)
        metrics.dead_letters.labels(name, self.topic)
        # And the delivery latency of its topic: the seed's latency query has a series before the first report.
        metrics.send_duration.labels(name, self.topic)
        self._failure_log: dict[tuple[str, str], tuple[float, int]] = {}

    # -- admission (trio thread, never waits) ---------------------------------------

    def fill(self) -> float:
        return max(
            self.buffered_events / self.settings.buffer_events,
            self.buffered_bytes / self.settings.buffer_bytes,
        )

    def room(self) -> tuple[int, int]:
        """How many more events and bytes :meth:`submit` would take now (none while closed or the
        breaker refuses): a spool hands no more than that."""
        if self._closed or not self.breaker.allows():
            return 0, 0
        return self.settings.buffer_events - self.buffered_events, self.settings.buffer_bytes - self.buffered_bytes

    def submit(self, records: list[Record], size: int) -> Outcome:
        """Accept all of ``records`` into the buffer, or none of them."""
        count = len(records)
        if self._closed:
            self._metrics.rejected.labels(self.name, "closed").inc(count)
            return Outcome.CLOSED
        if not self.breaker.allows():
            self._metrics.rejected.labels(self.name, "breaker").inc(count)
            return Outcome.UNAVAILABLE
        if (
            self.buffered_events + count > self.settings.buffer_events
            or self.buffered_bytes + size > self.settings.buffer_bytes
        ):
            self._metrics.rejected.labels(self.name, "full").inc(count)
            return Outcome.FULL
        # Cannot block: the channel holds at most buffer_events submissions of >= 1 event each.
        self._send.send_nowait(Submission(records, size, time.monotonic()))
        self.buffered_events += count
        self.buffered_bytes += size
        self._metrics.events_per_request.labels(self.name).observe(count)
        return Outcome.ACCEPTED

    def close(self) -> None:
        """Stop accepting; :meth:`run` drains what was accepted within the flush timeout."""
        if not self._closed:
            self._closed = True
            self._drain_scope.deadline = trio.current_time() + self._flush_timeout
            self._send.close()

    # -- the producer task -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Produce until closed, then drain and flush within the flush timeout."""
        async with trio.open_nursery() as pollers:
            await pollers.start(self._poll_loop)
            await pollers.start(self._probe_loop)
            task_status.started()
            with self._drain_scope:
                async with self._receive:
                    async for submission in self._receive:
                        # Everything queued behind it goes in the same step: taking one submission
                        # per scheduling round falls behind as soon as more requests arrive per round
                        # (measured: deliveries starved to ~150 events/s under 64 connections).
                        for queued in self._take_queued(submission):
                            await self._produce(self.topic, queued.records, queued.accepted_at)
            if self._drain_scope.cancelled_caught:
                self._count_unsent_as_lost()
            pollers.cancel_scope.cancel()
        try:
            await self._flush()
        finally:
            self.stopped.set()

    def _take_queued(self, first: Submission) -> Iterator[Submission]:
        yield first
        while True:
            try:
                yield self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def _produce(self, topic: str, records: Sequence[Record], accepted_at: float) -> None:
        index = 0
        while True:
            waited = time.monotonic() - accepted_at
            index, failures = self._producer.produce(topic, records, index, waited=waited)
            self._produced.set()
            if failures:
                self._settle_failures(failures)
            if index >= len(records):
                return
            # librdkafka's queue is full: wait for deliveries to make room.
            room = self._room = trio.Event()
            with trio.move_on_after(POLL_INTERVAL):
                await room.wait()

    async def _poll_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve delivery reports on the trio thread, every POLL_BUSY_INTERVAL while records are out.

        ``poll(0)`` never blocks. In a worker thread, ``poll`` took the GIL back once per delivery
        report and waited for the busy trio thread each time: under HTTP load deliveries crawled
        and the buffer filled (measured: 10,000 of 117,000 events/s offered accepted).
        """
        task_status.started()
        while True:
            async with self._poll_limiter:
                self._apply(self._producer.poll(0))
                for retired in list(self._retired):
                    self._apply(retired.poll(0), retired=True)
                    if not retired.queued():
                        self._retired.remove(retired)
                self._send_pending()
            if self.buffered_events or self._retired:
                await trio.sleep(POLL_BUSY_INTERVAL)
            else:
                # Idle: errors and statistics are served at the slower pace; a produce wakes us.
                with trio.move_on_after(POLL_INTERVAL):
                    await self._produced.wait()
            self._produced = trio.Event()

    async def _probe_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """While the breaker is half-open, ask Kafka for metadata: its answer closes the breaker."""
        task_status.started()
        while True:
            await trio.sleep(0.25)
            if self.breaker.state is not BreakerState.HALF_OPEN:
                continue
            try:
                # Bounded inside the call: librdkafka's list_topics gives up at its own timeout, so the
                # thread ends by itself; fail_after only covers a thread that could not start in time.
                with trio.fail_after(self._probe_timeout + 1.0):
                    await trio.to_thread.run_sync(self._producer.topics, self._probe_timeout, limiter=self._probe_limiter)
            except (KafkaUnavailable, trio.TooSlowError) as error:
                self.breaker.probe_failed(str(error) or "no answer")
            else:
                log.info("%s: Kafka answers again; circuit breaker closed", self.name, extra={"service": self.name})
                self.breaker.probe_succeeded()

    async def _flush(self) -> None:
        remaining_time = min(self._flush_timeout, max(1.0, self._drain_scope.deadline - trio.current_time()))
        with trio.CancelScope(shield=True):
            with trio.move_on_after(remaining_time + 1.0):
                for _ in range(3):
                    self._send_pending()
                    deliveries, remaining = await trio.to_thread.run_sync(
                        self._producer.flush, remaining_time, limiter=self._poll_limiter
                    )
                    self._apply(deliveries)
                    if not self._pending_dead_letters and not self._pending_resends:
                        break
        if self.buffered_events and self.spooled:
            log.info(
                "%s: %d events not settled by Kafka at shutdown stay in the spool", self.name, self.buffered_events,
                extra={"service": self.name, "topic": self.topic, "count": self.buffered_events},
            )
        elif self.buffered_events:
            log.error(
                "%s: %d accepted events not settled by Kafka at shutdown", self.name, self.buffered_events,
                extra={"service": self.name, "topic": self.topic, "count": self.buffered_events},
            )
            self._metrics.lost.labels(self.name).inc(self.buffered_events)

    # -- delivery reports (trio thread) ----------------------------------------------

    def _apply(self, deliveries: Deliveries, *, retired: bool = False) -> None:
        """Apply what a producer reported; a fatal error replaces the current producer, once for
        however many of its clients report one, and never for a producer already replaced."""
        replace = False
        if deliveries.delivered:
            self.breaker.record_success()
        for topic, count in deliveries.delivered.items():
            self._metrics.producer_success.labels(self.name, topic).inc(count)
            if topic == self.dead_letter_topic:
                self._metrics.dead_letters.labels(self.name, self.topic).inc(count)
        for topic, latencies in deliveries.latencies.items():
            self._metrics.send_duration.labels(self.name, topic).observe_many(latencies)
        self.buffered_events -= sum(deliveries.delivered.values())
        self.buffered_bytes -= deliveries.delivered_bytes
        if deliveries.failures:
            self._settle_failures(deliveries.failures)
        for settlement, topic in deliveries.traced:
            settlement.delivered_to(topic == self.dead_letter_topic)
        for name, reason, fatal in deliveries.client_errors:
            self._metrics.client_errors.labels(self.name, name).inc()
            self.last_client_error = f"{name}: {reason}"
            log.log(
                logging.ERROR if fatal else logging.WARNING, "%s producer: %s: %s", self.name, name, reason,
                extra={"service": self.name, "error": name},
            )
            if name == "_ALL_BROKERS_DOWN":
                self.breaker.trip("all brokers are down")
            if fatal:
                self.breaker.trip(f"fatal producer error {name}")
                replace = not retired
        if replace:
            self._replace_producer()
        if deliveries.settled:
            self._room.set()

    def _settle_failures(self, failures: list[Failure]) -> None:
        # One log line per kind of failure in this batch: (topic, error) -> [count, first failure].
        dead_lettered: dict[tuple[str, str], list[Any]] = {}
        lost: dict[tuple[str, str], list[Any]] = {}
        returned: dict[tuple[str, str], list[Any]] = {}
        for failure in failures:
            self._metrics.producer_error.labels(self.name, failure.topic, failure.error).inc()
            if failure.topic == self.topic and failure.error in RESEND_ERRORS and self._recreate is not None:
                self._pending_resends.append(failure.record)  # stays counted in the buffer
                continue
            if failure.topic == self.dead_letter_topic:
                if failure.error not in PERMANENT_ERRORS and not self._closed:
                    self._pending_dead_letters.append(failure.record)  # Kafka away: send it again
                    continue
                _tally(lost, failure)
                if failure.record.settlement is not None:
                    failure.record.settlement.lose()
                self._metrics.lost.labels(self.name).inc()
                self.buffered_events -= 1
                self.buffered_bytes -= failure.record.size
                continue
            if failure.error not in PERMANENT_ERRORS:
                # A record refused for what it is (too large, say) tells nothing of Kafka's health:
                # a client sending such records must not open the breaker for everyone.
                self.breaker.record_failure(failure.error)
                if self.spooled and failure.record.settlement is not None:
                    # Still on disk: the spool hands it again once Kafka is back.
                    _tally(returned, failure)
                    self.buffered_events -= 1
                    self.buffered_bytes -= failure.record.size
                    failure.record.settlement.undelivered()
                    continue
            _tally(dead_lettered, failure)
            # Stays counted in the buffer until its dead letter settles.
            headers = [h for h in failure.record.headers if not h[0].startswith("dlq-")]
            headers += [
                ("dlq-error", failure.error.encode()),
                ("dlq-reason", failure.reason.encode()),
                ("dlq-original-topic", failure.topic.encode()),
            ]
            settlement = failure.record.settlement
            if settlement is not None:
                settlement.refused()
            self._pending_dead_letters.append(Record(failure.record.key, failure.record.value, headers, settlement))
        for (topic, error), (count, first) in dead_lettered.items():
            self._log_failures(
                logging.WARNING,
                f"%s: %d events not delivered to %s (%s: %s); writing them to {self.dead_letter_topic}",
                topic, error, count, first,
            )
        for (topic, error), (count, first) in returned.items():
            self._log_failures(
                logging.WARNING, "%s: %d events not delivered to %s (%s: %s); kept in the spool, to be sent again",
                topic, error, count, first,
            )
        for (topic, error), (count, first) in lost.items():
            self._log_failures(
                logging.ERROR, "%s: %d dead letters lost: %s refused them for good (%s: %s)", topic, error, count, first
            )

    def _log_failures(self, level: int, message: str, topic: str, error: str, count: int, first: Failure) -> None:
        """Log one kind of failure with the first event's ids, at most once per FAILURE_LOG_INTERVAL."""
        now = trio.current_time()
        last, unlogged = self._failure_log.get((topic, error), (-math.inf, 0))
        count += unlogged
        if now - last < FAILURE_LOG_INTERVAL:
            self._failure_log[(topic, error)] = (last, count)
            return
        self._failure_log[(topic, error)] = (now, 0)
        extra: dict[str, Any] = {"service": self.name, "topic": topic, "error": error, "count": count}
        event_id, trace_id = event_ids(first.record)
        if event_id is not None:
            extra["event_id"] = event_id
        if trace_id is not None:
            extra["trace_id"] = trace_id
        log.log(level, message, self.name, count, topic, error, first.reason, extra=extra)

    def _replace_producer(self) -> None:
        """After a fatal error: a new producer takes new records; the old one is polled until empty."""
        if self._recreate is None:
            return
        self._retired.append(self._producer)
        self._producer = self._recreate()
        log.warning("%s: producer recreated after a fatal error", self.name, extra={"service": self.name})

    def _send_pending(self) -> None:
        """Hand librdkafka the records to send again and the dead letters not yet taken."""
        if self._pending_resends:
            pending = self._pending_resends
            index, failures = self._producer.produce(self.topic, pending)
            self._pending_resends = pending[index:]
            if failures:
                self._settle_failures(failures)
        if not self._pending_dead_letters:
            return
        pending = self._pending_dead_letters
        index, failures = self._producer.produce(self.dead_letter_topic, pending)
        self._pending_dead_letters = pending[index:]
        if failures:
            self._settle_failures(failures)

    def _count_unsent_as_lost(self) -> None:
        lost = 0
        while True:
            try:
                submission = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            lost += len(submission.records)
            self.buffered_events -= len(submission.records)
            self.buffered_bytes -= submission.size
        if lost and self.spooled:
            log.info("%s: %d events not handed to Kafka by the flush deadline stay in the spool", self.name, lost)
        elif lost:
            log.error(
                "%s: flush deadline passed with %d events never handed to Kafka", self.name, lost,
                extra={"service": self.name, "topic": self.topic, "count": lost},
            )
            self._metrics.lost.labels(self.name).inc(lost)

    # -- readiness ---------------------------------------------------------------------

    async def probe(self, timeout: float) -> str | None:
        """None when Kafka's metadata is reachable and has the topic; otherwise the reason."""
        if not self.breaker.allows():
            return f"circuit breaker {self.breaker.state.name.lower()}: {self.breaker.reason}"
        if trio.current_time() - self._probe_at < READY_CACHE_SECONDS:
            return self._probe_result
        async with self._probe_limiter:
            if trio.current_time() - self._probe_at < READY_CACHE_SECONDS:
                return self._probe_result
            try:
                # As in the probe loop: list_topics is bounded by its own timeout inside the thread.
                with trio.fail_after(timeout + 1.0):
                    topics = await trio.to_thread.run_sync(self._producer.topics, timeout)
            except KafkaUnavailable as error:
                result: str | None = f"kafka unreachable: {error}"
            except trio.TooSlowError:
                result = f"kafka metadata not answered within {timeout:.1f}s"
            else:
                result = None if self.topic in topics else f"topic {self.topic} does not exist yet"
            self._probe_at = trio.current_time()
            self._probe_result = result
            return result


def _tally(groups: dict[tuple[str, str], list[Any]], failure: Failure) -> None:
    group = groups.get((failure.topic, failure.error))
    if group is None:
        groups[(failure.topic, failure.error)] = [1, failure]
    else:
        group[0] += 1


def event_ids(record: Record) -> tuple[str | None, str | None]:
    """The event id and trace id a record carries in its headers, if any."""
    event_id = trace_id = None
    for key, value in record.headers:
        if key == "event-id":
            event_id = value.decode(errors="replace")
        elif key == "traceparent":
            parts = value.split(b"-")
            if len(parts) == 4:
                trace_id = parts[1].decode(errors="replace")
    return event_id, trace_id
