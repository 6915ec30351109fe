"""Records nobody follows are counted, not reported: against the real broker, every one is counted
delivered exactly once, in number and bytes, followed records and the latency samples keep their
reports, and Kafka holds what was counted; a record that fails comes back as a failure of its own
record, and is not counted delivered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
import trio
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from app.core import Record
from app.kafka import producer as producer_module
from app.kafka.producer import Deliveries, KafkaProducer, _Counted
from tests.conftest import SESSION_TOPIC_SUFFIXES, Infra
from tests.kafka_reader import KafkaReader
from tests.processes import free_port


@dataclass
class FakeProducer:
    """librdkafka's queue length, as the counting sees it (pure logic)."""

    outstanding: int = 0

    def __len__(self) -> int:
        return self.outstanding


def test_the_count_errs_low_until_the_producer_is_empty_then_is_exact() -> None:
    fake = FakeProducer()
    counted = _Counted(fake, tally=None)  # type: ignore[arg-type]  # settle() reads no tally
    counted.produced, counted.produced_bytes = 100, 10_000
    fake.outstanding = 40
    assert counted.settle() == (60, 6_000)
    fake.outstanding = 45  # other events queued meanwhile: nothing is taken back
    assert counted.settle() == (0, 0)
    counted.failed, counted.failed_bytes = 5, 50  # reported failed: never counted delivered
    fake.outstanding = 10
    assert counted.settle() == (25, 9_950 * 85 // 95 - 6_000)  # 85 of the 95 taken, at their average size
    fake.outstanding = 0
    assert counted.settle() == (10, 9_950 - 9_950 * 85 // 95)  # exact once empty
    assert (counted.delivered, counted.delivered_bytes) == (95, 9_950)
    assert counted.settle() == (0, 0)


@dataclass
class Follower:
    """A submission's observer (pure logic): what the profile tells it."""

    delivered: list[bool] = field(default_factory=list)

    def delivered_to(self, dead_letter_topic: bool) -> None:
        self.delivered.append(dead_letter_topic)

    def refused(self) -> None:
        raise AssertionError("nothing here is refused")

    def lose(self) -> None:
        raise AssertionError("nothing here is lost")

    def undelivered(self) -> None:
        raise AssertionError("nothing here times out")


@pytest.mark.integration
async def test_counted_records_are_delivered_counted_once_and_in_kafka(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first call is a latency sample; none of the next ones is, however slow the machine.
    monkeypatch.setattr(producer_module, "LATENCY_SAMPLE_EVERY", 3600.0)
    suffix = uuid.uuid4().hex[:10]
    SESSION_TOPIC_SUFFIXES.add(suffix)
    topic = f"counted-{suffix}"
    admin = AdminClient({"bootstrap.servers": infra.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    producer = KafkaProducer(
        {"bootstrap.servers": infra.kafka_bootstrap_servers, "linger.ms": 5, "log_level": 0}, counted_topic=topic
    )
    sampled = [Record(b"s", b"sampled %d" % i, [("event-id", b"s%d" % i)]) for i in range(20)]
    follower = Follower()
    followed = [Record(b"f", b"followed %d" % i, [("event-id", b"f%d" % i)], follower) for i in range(30)]
    counted = [Record(b"c%d" % (i % 7), b"counted %d" % i, [("event-id", b"c%d" % i)]) for i in range(5_000)]
    # The sample goes to the reporting producer; in the next call, a run of followed records still reports.
    for records in (sampled, counted[:2_500] + followed + counted[2_500:]):
        assert producer.produce(topic, records) == (len(records), [])

    total = Deliveries()
    with trio.fail_after(60):
        while producer.queued() or total.settled < 5_050:
            deliveries = producer.poll(0)
            total.delivered.update(deliveries.delivered)
            total.delivered_bytes += deliveries.delivered_bytes
            total.failures += deliveries.failures
            for topic_name, latencies in deliveries.latencies.items():
                total.latencies.setdefault(topic_name, []).extend(latencies)
            total.traced += deliveries.traced
            await trio.sleep(0.01)
    assert total.failures == []
    assert total.delivered == {topic: 5_050}
    assert total.delivered_bytes == sum(r.size for r in sampled + followed + counted)
    # Reports, each with a latency: the sample and the followed records, and no others.
    assert len(total.latencies[topic]) == len(sampled) + len(followed)
    assert [observer for observer, _ in total.traced] == [follower] * len(followed)
    assert producer.poll(0).delivered == {}, "nothing is counted twice"

    stored = await KafkaReader(infra.kafka_bootstrap_servers).read(topic, count=5_050, settle=1.0)
    assert sorted(r.headers["event-id"] for r in stored) == sorted(r.headers[0][1] for r in sampled + followed + counted)
    assert producer.flush(10)[1] == 0


@pytest.mark.integration
async def test_a_counted_record_that_times_out_comes_back_as_its_own_failure() -> None:
    # No broker at that address: every record times out, each reported with its record.
    producer = KafkaProducer(
        {"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 500, "log_level": 0},
        counted_topic="logs",
    )
    producer.produce("logs", [Record(b"k", b"sample", [])])  # the first call: a latency sample
    counted = [Record(b"k", b"counted %d" % i, []) for i in range(100)]
    assert producer.produce("logs", counted) == (100, [])
    failures = []
    delivered = 0
    with trio.fail_after(30):
        while producer.queued():
            deliveries = producer.poll(0)
            failures += deliveries.failures
            delivered += sum(deliveries.delivered.values())
            await trio.sleep(0.05)
    assert delivered == 0
    assert sorted((f.record.value, f.error) for f in failures) == sorted(
        [(b"sample", "_MSG_TIMED_OUT")] + [(r.value, "_MSG_TIMED_OUT") for r in counted]
    )
    assert producer.poll(0).delivered == {}
