"""The lag adapter against the real broker: committed offsets, end offsets, the oldest record's timestamp."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import confluent_kafka
import pytest
import trio
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

from app.kafka.errors import KafkaUnavailable
from app.kafka.lag import LagReader, PartitionLag
from app.kafka.lag_process import LagProcess, LagSpec
from tests.conftest import SESSION_TOPIC_SUFFIXES, Infra
from tests.processes import free_port

# 10 records in partition 0, 5 in partition 1, one second apart from this time on (ms since the epoch).
FIRST_TIMESTAMP_MS = 1_700_000_000_000


def test_the_groups_of_a_round_are_the_readers_then_the_others_in_turn() -> None:
    reader = LagReader({"bootstrap.servers": "127.0.0.1:1"}, topics=["t"], max_groups=3)
    groups = [f"g{i}" for i in range(7)]
    assert reader.choose(groups) == ["g0", "g1", "g2"]
    assert reader.choose(groups) == ["g3", "g4", "g5"]
    reader._readers = {"g5"}  # found reading the topics: asked at every round from now on
    assert reader.choose(groups) == ["g0", "g5", "g6"]
    assert reader.choose(groups) == ["g1", "g2", "g5"]
    assert reader.choose(groups) == ["g3", "g4", "g5"]
    assert reader.choose([]) == []


@pytest.fixture
def lagging_group(infra: Infra) -> Iterator[tuple[str, str]]:
    """A topic of two partitions, and a group with committed offsets 4 (of 10) and 5 (of 5), with no member."""
    suffix = uuid.uuid4().hex[:10]
    SESSION_TOPIC_SUFFIXES.add(suffix)
    topic, group = f"lag-{suffix}", f"log-processors-{suffix}"
    admin = AdminClient({"bootstrap.servers": infra.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = confluent_kafka.Producer({"bootstrap.servers": infra.kafka_bootstrap_servers})
    for partition, count in ((0, 10), (1, 5)):
        for i in range(count):
            producer.produce(topic, b"v", partition=partition, timestamp=FIRST_TIMESTAMP_MS + i * 1000)
    assert producer.flush(30) == 0
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 5)])]
    )[group].result(30)
    yield topic, group
    admin.delete_consumer_groups([group])[group].result(30)


@pytest.mark.integration
def test_a_group_behind_shows_its_lag_and_the_timestamp_of_its_next_record(
    infra: Infra, lagging_group: tuple[str, str]
) -> None:
    topic, group = lagging_group
    connection = {"bootstrap.servers": infra.kafka_bootstrap_servers}
    expected = [
        PartitionLag(group, topic, 0, committed=4, end=10, oldest_timestamp=(FIRST_TIMESTAMP_MS + 4000) / 1000),
        PartitionLag(group, topic, 1, committed=5, end=5, oldest_timestamp=None),
    ]
    named = LagReader(connection, topics=[topic], groups=[group], timeout=10)
    every = LagReader(connection, topics=[topic], timeout=10)  # every group of the cluster (a handful here)
    try:
        reading = named.read()
        assert reading.partitions == expected
        assert [p.lag for p in reading.partitions] == [6, 0]
        assert (reading.groups_asked, reading.groups_known, reading.failures) == (1, 1, 0)
        # The next round reads no record again: the offset has not moved.
        assert named.read().partitions == expected
        found = every.read()
        assert [p for p in found.partitions if p.group == group] == expected
        assert {p.topic for p in found.partitions} == {topic}
    finally:
        named.close()
        every.close()


@pytest.mark.integration
def test_a_cluster_that_does_not_answer_is_kafka_unavailable_within_the_timeout() -> None:
    reader = LagReader({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, topics=["t"], timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(KafkaUnavailable):
            reader.read()
    finally:
        reader.close()
    assert time.monotonic() - started < 5


@pytest.mark.integration
async def test_named_groups_on_a_cluster_that_does_not_answer_are_kafka_unavailable_too() -> None:
    # Through the child process, as the gateway asks: offsets of named groups are coordinator-bound admin requests.
    reader = LagProcess(spec(f"127.0.0.1:{free_port()}", ["t"], groups=["a", "b"], timeout=1.0))
    try:
        with trio.fail_after(15), pytest.raises(KafkaUnavailable):
            await reader.read()
    finally:
        await reader.aclose()


def spec(bootstrap_servers: str, topics: list[str], groups: list[str], timeout: float = 10.0) -> LagSpec:
    return LagSpec(
        {"bootstrap.servers": bootstrap_servers}, topics=topics, groups=groups, max_groups=100, timeout=timeout,
        client_id="lag-test",
    )


@pytest.mark.integration
async def test_the_child_process_reads_the_lag_and_an_abort_costs_one_round(
    infra: Infra, lagging_group: tuple[str, str]
) -> None:
    topic, group = lagging_group
    reader = LagProcess(spec(infra.kafka_bootstrap_servers, [topic], [group]))
    try:
        with trio.fail_after(60):
            assert [(p.group, p.lag) for p in (await reader.read()).partitions] == [(group, 6), (group, 0)]
            pid = reader.pid
            assert pid is not None and pid != os.getpid()
            # What librdkafka's failed assertion does to the process that runs the admin requests.
            os.kill(pid, signal.SIGABRT)
            with pytest.raises(KafkaUnavailable, match="killed by SIGABRT"):
                await reader.read()
            assert [(p.group, p.lag) for p in (await reader.read()).partitions] == [(group, 6), (group, 0)]
            assert reader.restarts == 1 and reader.pid not in (None, pid)
    finally:
        await reader.aclose()
    assert reader.pid is None


@pytest.mark.integration
async def test_a_child_that_stops_answering_is_killed_at_the_round_deadline(
    infra: Infra, lagging_group: tuple[str, str]
) -> None:
    topic, group = lagging_group
    reader = LagProcess(spec(infra.kafka_bootstrap_servers, [topic], [group], timeout=1.0), spare=1.0)
    try:
        with trio.fail_after(60):
            await reader.read()
            pid = reader.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            started = trio.current_time()
            with pytest.raises(KafkaUnavailable, match="did not answer"):
                await reader.read()
            assert trio.current_time() - started < 5
            assert (await reader.read()).partitions  # a new child
    finally:
        await reader.aclose()
