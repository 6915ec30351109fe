"""The relay publisher's reading of its checkpoint partition and its wait on a full queue (pure logic:
the consumer and the producer are fakes), and the configurations librdkafka refuses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from app.kafka.errors import KafkaConfigError
from app.kafka.transactional import PublishFailed, TransactionalPublisher, produce_within, watermarks

PARTITION = confluent_kafka.TopicPartition("outbox-relay-checkpoints", 0)


class Consumer:
    """Answers ``get_watermark_offsets`` with the errors it was given, then with offsets."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.asked = 0

    def get_watermark_offsets(self, partition: Any, timeout: float) -> tuple[int, int]:
        self.asked += 1
        assert partition is PARTITION and timeout > 0
        if self.errors:
            raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(self.errors.pop(0)))
        return 3, 7


def test_a_partition_without_a_leader_yet_is_asked_again() -> None:
    consumer = Consumer(confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION, confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE)
    assert watermarks(consumer, PARTITION, 5.0, retry_every=0.01) == (3, 7)
    assert consumer.asked == 3


def test_other_errors_and_a_leader_that_never_comes_are_raised() -> None:
    with pytest.raises(confluent_kafka.KafkaException):
        watermarks(Consumer(confluent_kafka.KafkaError._TRANSPORT), PARTITION, 5.0, retry_every=0.01)
    endless = Consumer(*[confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(confluent_kafka.KafkaException):
        watermarks(endless, PARTITION, 0.2, retry_every=0.01)
    assert 5 < endless.asked < 1000


class Producer:
    """Refuses ``full`` produce calls with BufferError (librdkafka's queue is full), then takes them."""

    def __init__(self, full: int) -> None:
        self.full = full
        self.produced: list[tuple[str, bytes]] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: bytes, *, headers: Any, on_delivery: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, value))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_a_full_queue_is_waited_on_until_the_deadline_and_no_longer() -> None:
    producer = Producer(full=3)
    produce_within(producer, time.monotonic() + 5, "t", b"k", b"v", [], None)
    assert producer.produced == [("t", b"v")] and producer.polls == 3, "delivery reports were served meanwhile"

    stuck = Producer(full=10**6)
    started = time.monotonic()
    with pytest.raises(PublishFailed, match="queue stayed full"):
        produce_within(stuck, started + 0.2, "t", b"k", b"v", [], None)
    assert time.monotonic() - started < 2 and not stuck.produced


def test_a_configuration_librdkafka_rejects_is_a_kafka_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    config = {"bootstrap.servers": "127.0.0.1:9", "security.protocol": "SSL", "ssl.ca.location": str(missing)}
    with pytest.raises(KafkaConfigError, match="ssl.ca.location"):
        TransactionalPublisher(config, transactional_id="t", checkpoint_topic="t.checkpoint")


def test_a_value_confluent_kafka_refuses_is_a_kafka_config_error() -> None:
    config = {"bootstrap.servers": "127.0.0.1:9", "error_cb": "not a function"}  # a TypeError of confluent-kafka's
    with pytest.raises(KafkaConfigError, match="error_cb"):
        TransactionalPublisher(config, transactional_id="t", checkpoint_topic="t.checkpoint")
