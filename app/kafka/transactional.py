"""Kafka transactions for the outbox relay: publish rows and their checkpoint atomically.

Every Kafka transaction the relay commits holds the outbox rows it publishes and one record
on a single-partition checkpoint topic naming those rows and where they landed. Opening a
publisher calls ``init_transactions`` with the relay's fixed ``transactional.id``, which
fences any older producer with that id (a relay that lost its leadership but still runs) and
completes or aborts its open transaction; the checkpoint read after that is therefore the
last transaction Kafka committed. All methods block: call them off the trio thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import msgspec

from app.kafka.connection import only_connection
from app.kafka.errors import KafkaConfigError, KafkaError, KafkaUnavailable

log = logging.getLogger(__name__)

CHECKPOINT_KEY = b"outbox-relay"
# A partition without a leader for now (just created, or its leader moving): asked again.
_NO_LEADER_YET = frozenset(
    {
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


class PublishFailed(KafkaError):
    """A transaction was not committed; nothing of it is visible to read_committed consumers."""


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    outbox_id: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class Checkpoint(msgspec.Struct, frozen=True):
    """The rows of one committed transaction: (outbox id, partition, offset) each."""

    rows: list[tuple[int, int, int]]


_encode_checkpoint = msgspec.json.Encoder().encode
_decode_checkpoint = msgspec.json.Decoder(Checkpoint).decode


def _reason(error: confluent_kafka.KafkaException) -> str:
    kafka_error = error.args[0]
    return f"{kafka_error.name()}: {kafka_error.str()}" if hasattr(kafka_error, "name") else str(kafka_error)


def _client(kind: Any, conf: dict[str, Any]) -> Any:
    """A librdkafka producer or consumer; a configuration it rejects is KafkaConfigError."""
    try:
        return kind(conf)
    except confluent_kafka.KafkaException as error:  # librdkafka's checks (a file it cannot read, say)
        raise KafkaConfigError(_reason(error)) from None
    except (ValueError, TypeError) as error:  # confluent-kafka's own checks of the values
        raise KafkaConfigError(str(error)) from None


class TransactionalPublisher:
    """One transactional producer; discard it after any failure and open a new one."""

    def __init__(self, config: dict[str, Any], *, transactional_id: str, checkpoint_topic: str) -> None:
        """Create the producer (no request to Kafka yet); raises KafkaConfigError when librdkafka rejects ``config``."""
        self._connection = only_connection(config)
        self._checkpoint_topic = checkpoint_topic
        conf = dict(config)
        conf["transactional.id"] = transactional_id
        conf["logger"] = logging.getLogger("librdkafka")
        # librdkafka's latest statistics (JSON), decoded only when metrics are scraped.
        self.statistics: str | None = None
        if int(conf.get("statistics.interval.ms", 0)) > 0:
            conf["stats_cb"] = self._on_statistics
        self._producer = _client(confluent_kafka.Producer, conf)

    def _on_statistics(self, statistics: str) -> None:
        # Runs inside the producer's poll/flush calls, in the relay's worker thread.
        self.statistics = statistics

    def open(self, timeout: float) -> Checkpoint | None:
        """Fence older producers of this id, then read the last committed checkpoint."""
        try:
            self._producer.init_transactions(timeout)
        except (confluent_kafka.KafkaException, SystemError) as error:
            raise KafkaUnavailable(f"init_transactions: {error}") from None
        return self._read_checkpoint(timeout)

    def publish(self, records: Sequence[OutgoingRecord], timeout: float) -> list[tuple[int, int, int]]:
        """Publish ``records`` and their checkpoint in one transaction; (id, partition, offset) of each."""
        positions: dict[int, tuple[int, int]] = {}
        failures: list[Any] = []  # KafkaError objects, formatted after the flush

        def delivered(outbox_id: int) -> Any:
            def report(err: Any, msg: Any) -> None:
                if err is None:
                    positions[outbox_id] = (msg.partition(), msg.offset())
                else:
                    failures.append(err)

            return report

        deadline = time.monotonic() + timeout
        try:
            self._producer.begin_transaction()
            for record in records:
                produce_within(
                    self._producer, deadline,
                    record.topic, record.key, record.value, record.headers, delivered(record.outbox_id),
                )
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))  # the rest of the timeout
            if remaining or failures or len(positions) != len(records):
                raise PublishFailed(
                    f"{remaining} records undelivered, failures: {[str(f) for f in failures[:3]]}"
                    if remaining or failures
                    else "delivery reports missing"
                )
            rows = [(record.outbox_id, *positions[record.outbox_id]) for record in records]
            checkpoint = _encode_checkpoint(Checkpoint(rows))
            produce_within(self._producer, deadline, self._checkpoint_topic, CHECKPOINT_KEY, checkpoint, [], None)
            self._producer.commit_transaction(timeout)
        except confluent_kafka.KafkaException as error:
            self._abort()
            raise PublishFailed(_reason(error)) from None
        except SystemError as error:
            # confluent-kafka can surface a fatal error (e.g. _FENCED) as a SystemError from its C code.
            self._abort()
            raise PublishFailed(f"producer failed: {error.__cause__ or error}") from None
        except PublishFailed:
            self._abort()
            raise
        return rows

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(5.0)
        except (confluent_kafka.KafkaException, SystemError) as error:
            log.warning("abort_transaction: %s", error)

    def _read_checkpoint(self, timeout: float) -> Checkpoint | None:
        consumer = _client(
            confluent_kafka.Consumer,
            {
                **self._connection,
                "group.id": f"outbox-relay-recovery-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "logger": logging.getLogger("librdkafka"),
            },
        )
        try:
            low, high = watermarks(consumer, confluent_kafka.TopicPartition(self._checkpoint_topic, 0), timeout)
            window = 64
            while high > low:
                start = max(low, high - window)
                last = self._last_record(consumer, start, high, timeout)
                if last is not None:
                    return _decode_checkpoint(last)
                if start == low:
                    break
                window *= 4
            return None
        except confluent_kafka.KafkaException as error:
            raise KafkaUnavailable(f"reading the relay checkpoint: {_reason(error)}") from None
        except msgspec.DecodeError as error:
            raise KafkaUnavailable(f"unreadable relay checkpoint: {error}") from None
        finally:
            consumer.close()

    def _last_record(self, consumer: Any, start: int, end: int, timeout: float) -> bytes | None:
        consumer.assign([confluent_kafka.TopicPartition(self._checkpoint_topic, 0, start)])
        last: bytes | None = None
        while True:
            message = consumer.poll(timeout)
            if message is None:
                raise KafkaUnavailable(f"no answer reading {self._checkpoint_topic} within {timeout:.0f}s")
            error = message.error()
            if error is not None:
                if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    return last
                raise confluent_kafka.KafkaException(error)
            if message.key() == CHECKPOINT_KEY:
                last = message.value()
            if message.offset() >= end - 1:
                return last


def produce_within(
    producer: Any, deadline: float,
    topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], callback: Any,
) -> None:
    """Produce one record, waiting while librdkafka's queue is full until ``deadline`` (monotonic). Blocking."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=callback)
            return
        except BufferError:
            if time.monotonic() >= deadline:
                raise PublishFailed("the producer's queue stayed full until the timeout") from None
            producer.poll(0.05)


def watermarks(consumer: Any, partition: Any, timeout: float, *, retry_every: float = 0.1) -> tuple[int, int]:
    """A partition's low and high offsets. Blocking.

    Right after the checkpoint topic is created, the broker can answer that the partition has no
    leader yet: that is asked again until ``timeout``; any other error is raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=max(0.1, deadline - time.monotonic()))
            return int(low), int(high)
        except confluent_kafka.KafkaException as error:
            if error.args[0].code() not in _NO_LEADER_YET or time.monotonic() + retry_every >= deadline:
                raise
        time.sleep(retry_every)
