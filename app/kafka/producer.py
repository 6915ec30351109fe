"""The one adapter around ``confluent_kafka.Producer``.

librdkafka calls back from whichever thread runs ``poll``/``flush``. The callbacks here only
add to plain per-topic tallies; :meth:`KafkaProducer.poll` (``poll(0)`` on the trio thread, which
never waits) and :meth:`KafkaProducer.flush` (in a worker thread) turn them into a plain
:class:`Deliveries` value that the trio side applies. No trio object is ever touched from a
librdkafka thread.

With ``counted_topic``, the records of that topic that nobody follows (no settlement: no ack,
span or spool waits for them) go to a second librdkafka producer configured with
``delivery.report.only.error``, which confluent-kafka applies in its own C callback: for a
success it builds no ``Message`` (with copies of key and value) and calls no Python, which
together measured about a fifth of the CPU of a batch of 500 events. That producer's successes
are counted instead: produced, less failed (their reports still come, each with its record, for
the dead-letter path), less what librdkafka still holds.
Records someone follows, the dead letters, and one submission per LATENCY_SAMPLE_EVERY (whose
reports give the latency histogram its samples) go to the first producer, with every report.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka

from app.config import ProfileSettings
from app.core import DeliveryObserver, Record, Tally, sized
from app.kafka.errors import KafkaConfigError, KafkaUnavailable

@dataclass(slots=True)
class Failure:
    """A record that Kafka did not take, with the reason."""

    topic: str
    record: Record
    error: str
    reason: str
    fatal: bool = False


@dataclass(slots=True)
class Deliveries:
    """What librdkafka reported since the previous poll, as plain data."""

    delivered: collections.Counter[str] = field(default_factory=collections.Counter)
    # Seconds from acceptance into the profile's buffer to the delivery report, by topic.
    latencies: dict[str, list[float]] = field(default_factory=dict)
    delivered_bytes: int = 0
    failures: list[Failure] = field(default_factory=list)
    client_errors: list[tuple[str, str, bool]] = field(default_factory=list)
    # Delivered records that carry a settlement (only while tracing), with their topic.
    traced: list[tuple[DeliveryObserver, str]] = field(default_factory=list)

    @property
    def settled(self) -> int:
        """Records whose fate is known (delivered or failed)."""
        return sum(self.delivered.values()) + len(self.failures)

    @property
    def settled_bytes(self) -> int:
        return self.delivered_bytes + sum(f.record.size for f in self.failures)


_settlement = operator.attrgetter("settlement")


def _any_followed(records: Sequence[Record]) -> bool:
    """Whether a record of ``records`` is followed (has a settlement), tested in C."""
    return any(map(operator.is_not, map(_settlement, records), itertools.repeat(None)))


# How often the counted producer's topic sends one submission through the reporting producer,
# for the latency histogram's samples.
LATENCY_SAMPLE_EVERY = 0.1


@dataclass(slots=True)
class _Counted:
    """The producer of the records nobody follows, and what it was handed and reported failed."""

    producer: Any  # confluent_kafka.Producer with delivery.report.only.error
    tally: Tally  # its records' tally: only failures reach it
    produced: int = 0
    produced_bytes: int = 0
    failed: int = 0
    failed_bytes: int = 0
    delivered: int = 0  # counted so far
    delivered_bytes: int = 0

    def settle(self) -> tuple[int, int]:
        """The records delivered since the last call, and (estimated until none is left) their bytes.

        What librdkafka holds (queued, in flight, or reported and not yet served) is not delivered;
        its length also counts other pending events, so this errs low, never high, and is exact
        once the producer is empty. Bytes: the average record's, until then.
        """
        outstanding = len(self.producer)
        taken = self.produced - self.failed
        delivered = max(self.delivered, taken - outstanding)
        if delivered == self.delivered:
            return 0, 0
        taken_bytes = self.produced_bytes - self.failed_bytes
        if delivered == taken:
            delivered_bytes = taken_bytes
        else:
            delivered_bytes = max(self.delivered_bytes, min(taken_bytes, taken_bytes * delivered // max(1, taken)))
        count, size = delivered - self.delivered, delivered_bytes - self.delivered_bytes
        self.delivered, self.delivered_bytes = delivered, delivered_bytes
        return count, size


def producer_config(
    profile: ProfileSettings,
    *,
    connection: dict[str, Any],
    client_id: str,
    max_message_bytes: int,
    statistics_interval_ms: int = 0,
) -> dict[str, Any]:
    """The librdkafka configuration of a profile."""
    config: dict[str, Any] = {
        **connection,
        "client.id": client_id,
        "acks": profile.acks,
        "compression.type": profile.compression,
        "batch.size": profile.batch_size,
        "linger.ms": profile.linger_ms,
        "retries": profile.retries,
        "retry.backoff.ms": profile.retry_backoff_ms,
        "retry.backoff.max.ms": max(profile.retry_backoff_ms, profile.retry_backoff_max_ms),
        "delivery.timeout.ms": profile.delivery_timeout_ms,
        "enable.idempotence": profile.idempotence,
        # librdkafka's own queue is sized above the profile's bound: the profile refuses first.
        "queue.buffering.max.messages": profile.buffer_events + 1000,
        "queue.buffering.max.kbytes": profile.buffer_bytes // 1024 + 1024,
        "message.max.bytes": max_message_bytes,
        "statistics.interval.ms": statistics_interval_ms,
    }
    return config


class Producer(Protocol):
    """What a profile drives: a :class:`KafkaProducer`, or a test's fake of one."""

    @property
    def statistics(self) -> str | Sequence[str] | None: ...

    def produce(
        self, topic: str, records: Sequence[Record], start: int = 0, *, waited: float = 0.0
    ) -> tuple[int, list[Failure]]: ...

    def poll(self, timeout: float) -> Deliveries: ...

    def flush(self, timeout: float) -> tuple[Deliveries, int]: ...

    def queued(self) -> int: ...

    def topics(self, timeout: float) -> set[str]: ...


class KafkaProducer:
    """A long-lived producer. Blocking methods are marked; call them off the trio thread."""

    def __init__(self, config: Mapping[str, Any], *, counted_topic: str | None = None) -> None:
        self._tallies: dict[str, Tally] = {}
        self._client_errors: collections.deque[Any] = collections.deque()
        # librdkafka's latest statistics (JSON) of each of its producers, decoded only when metrics are scraped.
        self._statistics: dict[int, str] = {}
        conf = dict(config)
        conf["error_cb"] = self._client_errors.append
        statistics = int(conf.get("statistics.interval.ms", 0)) > 0
        # librdkafka's log lines are queued and served by poll(), in the poll thread.
        conf["logger"] = logging.getLogger("librdkafka")
        conf.setdefault("log.connection.close", False)
        self._counted: _Counted | None = None
        self._counted_topic = counted_topic
        self._sampled_at = -LATENCY_SAMPLE_EVERY
        try:
            if counted_topic is not None:
                counted = {**conf, "delivery.report.only.error": True}
                if statistics:
                    counted["stats_cb"] = functools.partial(self._on_statistics, 1)
                self._counted = _Counted(confluent_kafka.Producer(counted), Tally(counted_topic))
            if statistics:
                conf["stats_cb"] = functools.partial(self._on_statistics, 0)
            self._producer = confluent_kafka.Producer(conf)
        except confluent_kafka.KafkaException as error:
            raise KafkaConfigError(str(error.args[0])) from None

    def _on_statistics(self, client: int, statistics: str) -> None:
        # Runs inside poll(), in the poll thread: keep the string, nothing more.
        self._statistics[client] = statistics

    @property
    def statistics(self) -> tuple[str, ...]:
        """The latest statistics (JSON) of each of its librdkafka producers."""
        return tuple(self._statistics.values())

    def produce(
        self, topic: str, records: Sequence[Record], start: int = 0, *, waited: float = 0.0
    ) -> tuple[int, list[Failure]]:
        """Hand ``records[start:]`` to librdkafka without blocking.

        Returns the index reached (less than ``len(records)`` when librdkafka's queue is
        full: back off, poll, and call again from there) and the records it refused outright.
        ``waited``: how long the records were buffered before; it counts in their reported latency.
        """
        tally = self._tallies.get(topic)
        if tally is None:
            tally = self._tallies[topic] = Tally(topic)
        counted = self._counted if topic == self._counted_topic else None
        if counted is not None:
            now = time.monotonic()
            if now - self._sampled_at >= LATENCY_SAMPLE_EVERY:
                self._sampled_at = now  # this call's records report, for the latency histogram
                counted = None
        if counted is None:
            return self._produce(self._producer.produce, topic, tally, records, start, len(records), waited)
        if not _any_followed(records[start:] if start else records):
            return self._produce_counted(counted, topic, records, start, len(records))
        index = start
        failures: list[Failure] = []
        while index < len(records):
            # A run of records nobody follows goes to the counted producer, a run of followed ones to the reporting one.
            followed = records[index].settlement is not None
            end = index + 1
            while end < len(records) and (records[end].settlement is not None) is followed:
                end += 1
            if followed:
                reached, refused = self._produce(self._producer.produce, topic, tally, records, index, end, waited)
            else:
                reached, refused = self._produce_counted(counted, topic, records, index, end)
            failures += refused
            if reached < end:
                return reached, failures
            index = end
        return len(records), failures

    def _produce_counted(
        self, counted: _Counted, topic: str, records: Sequence[Record], start: int, end: int
    ) -> tuple[int, list[Failure]]:
        """Hand ``records[start:end]``, which nobody follows, to the counted producer, and count them."""
        reached, failures = self._produce(counted.producer.produce, topic, counted.tally, records, start, end, 0.0)
        taken = records[start:reached] if start or reached < len(records) else records
        counted.produced += len(taken) - len(failures)
        counted.produced_bytes += sized(taken) - sum(f.record.size for f in failures)
        return reached, failures

    @staticmethod
    def _produce(
        produce: Any, topic: str, tally: Tally, records: Sequence[Record], start: int, end: int, waited: float
    ) -> tuple[int, list[Failure]]:
        """Hand ``records[start:end]`` to ``produce``: the index reached, and the records refused."""
        failures: list[Failure] = []
        index = start
        for index in range(start, end):
            record = records[index]
            record.tally = tally
            record.waited = waited
            try:
                # Positional, in the order of confluent-kafka's signature (its cimpl.pyi: topic, value,
                # key, partition, callback, on_delivery, timestamp, headers): keywords cost a dict per
                # call, measured at about a quarter of it. -1: librdkafka's partitioner; 0: the time
                # of the call.
                produce(topic, record.value, record.key, -1, record, None, 0, record.headers)
            except BufferError:
                return index, failures
            except confluent_kafka.KafkaException as error:
                kafka_error = error.args[0]
                failures.append(Failure(topic, record, kafka_error.name(), kafka_error.str(), kafka_error.fatal()))
        return end, failures

    def poll(self, timeout: float) -> Deliveries:
        """Serve delivery reports and client errors for up to ``timeout`` seconds. Blocking."""
        try:
            self._producer.poll(timeout)
            if self._counted is not None:
                self._counted.producer.poll(0)
        except (confluent_kafka.KafkaException, SystemError) as error:
            self._client_errors.append(_raised_error(error))
        return self._collect()

    def flush(self, timeout: float) -> tuple[Deliveries, int]:
        """Wait until every queued record is settled or the timeout passes. Blocking.

        Returns the reports and the number of records still not settled.
        """
        deadline = time.monotonic() + timeout
        remaining = 0
        for producer in self._producers():
            try:
                remaining += producer.flush(max(0.0, deadline - time.monotonic()))
            except (confluent_kafka.KafkaException, SystemError) as error:
                self._client_errors.append(_raised_error(error))
                remaining += len(producer)
        return self._collect(), int(remaining)

    def queued(self) -> int:
        return sum(len(producer) for producer in self._producers())

    def _producers(self) -> list[Any]:
        return [self._producer] if self._counted is None else [self._counted.producer, self._producer]

    def topics(self, timeout: float) -> set[str]:
        """The topics in the cluster's metadata. Blocking; raises KafkaUnavailable."""
        try:
            metadata = self._producer.list_topics(timeout=timeout)
        except confluent_kafka.KafkaException as error:
            raise KafkaUnavailable(str(error.args[0].str())) from None
        return set(metadata.topics)

    def _collect(self) -> Deliveries:
        out = Deliveries()
        counted = self._counted
        if counted is not None:
            failed = counted.tally.failed
            if failed:
                counted.tally.failed = []
                counted.failed += len(failed)
                counted.failed_bytes += sum(record.size for record, _ in failed)
                out.failures += [Failure(counted.tally.topic, r, e.name(), e.str(), e.fatal()) for r, e in failed]
            delivered, delivered_bytes = counted.settle()
            if delivered:
                out.delivered[counted.tally.topic] += delivered
                out.delivered_bytes += delivered_bytes
        for topic, tally in self._tallies.items():
            if tally.delivered:
                out.delivered[topic] += tally.delivered
                out.delivered_bytes += tally.delivered_bytes
                tally.delivered = tally.delivered_bytes = 0
            if tally.latencies:
                out.latencies[topic], tally.latencies = tally.latencies, []
            if tally.traced:
                out.traced += [(settlement, topic) for settlement in tally.traced]
                tally.traced = []
            if tally.failed:
                out.failures += [Failure(topic, r, e.name(), e.str(), e.fatal()) for r, e in tally.failed]
                tally.failed = []
        errors = self._client_errors
        while errors:
            error = errors.popleft()
            out.client_errors.append((error.name(), error.str(), error.fatal()))
        return out


def _raised_error(error: Exception) -> Any:
    """The ``KafkaError`` that ``poll`` or ``flush`` raised; anything else is raised again.

    confluent-kafka raises a fatal error from ``poll``/``flush`` instead of passing it to
    ``error_cb``. When a delivery callback runs after it within the same call, the error
    surfaces as a ``SystemError`` caused by it.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, confluent_kafka.KafkaException):
            return cause.args[0]
        cause = cause.__cause__ or cause.__context__
    raise error
