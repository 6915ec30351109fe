"""The one adapter around ``confluent_kafka.Producer``.

librdkafka calls back from whichever thread runs ``poll``/``flush``. The callbacks here only
add to plain per-topic tallies; :meth:`KafkaProducer.poll` (``poll(0)`` on the trio thread, which
never waits) and :meth:`KafkaProducer.flush` (in a worker thread) turn them into a plain
:class:`Deliveries` value that the trio side applies. No trio object is ever touched from a
librdkafka thread.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka

from app.config import ProfileSettings
from app.core import DeliveryObserver, Record, Tally
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

    statistics: str | None

    def produce(
        self, topic: str, records: Sequence[Record], start: int = 0, *, waited: float = 0.0
    ) -> tuple[int, list[Failure]]: ...

    def poll(self, timeout: float) -> Deliveries: ...

    def flush(self, timeout: float) -> tuple[Deliveries, int]: ...

    def queued(self) -> int: ...

    def topics(self, timeout: float) -> set[str]: ...


class KafkaProducer:
    """A long-lived producer. Blocking methods are marked; call them off the trio thread."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._tallies: dict[str, Tally] = {}
        self._client_errors: collections.deque[Any] = collections.deque()
        # librdkafka's latest statistics (JSON), decoded only when metrics are scraped.
        self.statistics: str | None = None
        conf = dict(config)
        conf["error_cb"] = self._client_errors.append
        if int(conf.get("statistics.interval.ms", 0)) > 0:
            conf["stats_cb"] = self._on_statistics
        # librdkafka's log lines are queued and served by poll(), in the poll thread.
        conf["logger"] = logging.getLogger("librdkafka")
        conf.setdefault("log.connection.close", False)
        try:
            self._producer = confluent_kafka.Producer(conf)
        except confluent_kafka.KafkaException as error:
            raise KafkaConfigError(str(error.args[0])) from None

    def _on_statistics(self, statistics: str) -> None:
        # Runs inside poll(), in the poll thread: keep the string, nothing more.
        self.statistics = statistics

    def produce(
        self, topic: str, records: Sequence[Record], start: int = 0, *, waited: float = 0.0
    ) -> tuple[int, list[Failure]]:
        """Hand ``records[start:]`` to librdkafka without blocking.

        Returns the index reached (less than ``len(records)`` when librdkafka's queue is
        full: back off, poll, and call again from there) and the records it refused outright.
        ``waited``: how long the records were buffered before; it counts in their reported latency.
        """
        produce = self._producer.produce
        tally = self._tallies.get(topic)
        if tally is None:
            tally = self._tallies[topic] = Tally(topic)
        failures: list[Failure] = []
        index = start
        for index in range(start, len(records)):
            record = records[index]
            record.tally = tally
            record.waited = waited
            try:
                # Positional, in the order of confluent-kafka's signature (its cimpl.pyi: topic, value,
                # key, partition, callback, on_delivery, timestamp, headers), which mypy checks here:
                # keywords cost a dict per call, measured at about a quarter of it. -1: librdkafka's
                # partitioner; 0: the time of the call.
                produce(topic, record.value, record.key, -1, record, None, 0, record.headers)  # type: ignore[arg-type]
            except BufferError:
                return index, failures
            except confluent_kafka.KafkaException as error:
                kafka_error = error.args[0]
                failures.append(Failure(topic, record, kafka_error.name(), kafka_error.str(), kafka_error.fatal()))
        return len(records), failures

    def poll(self, timeout: float) -> Deliveries:
        """Serve delivery reports and client errors for up to ``timeout`` seconds. Blocking."""
        try:
            self._producer.poll(timeout)
        except (confluent_kafka.KafkaException, SystemError) as error:
            self._client_errors.append(_raised_error(error))
        return self._collect()

    def flush(self, timeout: float) -> tuple[Deliveries, int]:
        """Wait until every queued record is settled or the timeout passes. Blocking.

        Returns the reports and the number of records still not settled.
        """
        try:
            remaining = self._producer.flush(timeout)
        except (confluent_kafka.KafkaException, SystemError) as error:
            self._client_errors.append(_raised_error(error))
            remaining = len(self._producer)
        return self._collect(), int(remaining)

    def queued(self) -> int:
        return len(self._producer)

    def topics(self, timeout: float) -> set[str]:
        """The topics in the cluster's metadata. Blocking; raises KafkaUnavailable."""
        try:
            metadata = self._producer.list_topics(timeout=timeout)
        except confluent_kafka.KafkaException as error:
            raise KafkaUnavailable(str(error.args[0].str())) from None
        return set(metadata.topics)

    def _collect(self) -> Deliveries:
        out = Deliveries()
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
