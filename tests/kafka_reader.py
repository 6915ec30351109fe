"""Reads records back from the real Kafka, to prove what the gateway wrote."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable

import confluent_kafka
import trio


@dataclasses.dataclass(frozen=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @classmethod
    def of(cls, msg: confluent_kafka.Message) -> ConsumedRecord:
        """The record of a message consumed without error: librdkafka gives it a topic, partition, offset and
        value (the gateway writes no tombstones), and headers as (name, bytes) pairs."""
        topic, partition, offset, value = msg.topic(), msg.partition(), msg.offset(), msg.value()
        if topic is None or partition is None or offset is None or value is None:
            raise RuntimeError(f"a consumed record lacks its topic, partition, offset or value: {msg!r}")
        pairs = msg.headers() or []
        if isinstance(pairs, dict):  # the type produce() takes too; consume() gives a list
            pairs = list(pairs.items())
        headers: dict[str, bytes] = {}
        for name, header in pairs:
            if not isinstance(header, bytes):
                raise RuntimeError(f"a consumed record's header {name!r} has no bytes value: {header!r}")
            headers[name] = header
        return cls(topic=topic, partition=partition, offset=offset, key=msg.key(), value=value, headers=headers)


class KafkaReader:
    def __init__(self, bootstrap_servers: str, config: dict[str, str] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.config = config or {}  # security settings, for a secured listener

    def read_sync(
        self,
        topic: str,
        *,
        until: Callable[[list[ConsumedRecord]], bool],
        timeout: float = 30.0,
        settle: float = 0.0,
    ) -> list[ConsumedRecord]:
        """Consume ``topic`` from the beginning (read_committed) until ``until`` holds.

        With ``settle`` > 0, keep reading that long after ``until`` first holds, so records
        that should not be there (duplicates, rejected requests) would show up.
        """
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"test-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "topic.metadata.refresh.interval.ms": 1000,
                **self.config,
            }
        )
        records: list[ConsumedRecord] = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + timeout
            settled_at: float | None = None
            while time.monotonic() < deadline:
                if settled_at is None and until(records):
                    settled_at = time.monotonic() + settle
                if settled_at is not None and time.monotonic() >= settled_at:
                    break
                for msg in consumer.consume(num_messages=10_000, timeout=0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() in (
                            confluent_kafka.KafkaError._PARTITION_EOF,
                            confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
                        ):
                            continue
                        raise RuntimeError(f"consuming {topic}: {error}")
                    records.append(ConsumedRecord.of(msg))
        finally:
            consumer.close()
        return records

    async def read(
        self,
        topic: str,
        *,
        count: int | None = None,
        until: Callable[[list[ConsumedRecord]], bool] | None = None,
        timeout: float = 30.0,
        settle: float = 0.0,
    ) -> list[ConsumedRecord]:
        if until is None:
            expected = count or 0
            until = lambda records: len(records) >= expected  # noqa: E731
        return await trio.to_thread.run_sync(
            lambda: self.read_sync(topic, until=until, timeout=timeout, settle=settle)
        )
