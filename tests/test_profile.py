"""The profile's buffer, producer task and delivery handling, with a fake producer.

The fake stands in for librdkafka only to drive pure logic (accounting, dead letters,
backpressure, draining); delivery into a real Kafka is proven in tests/shippers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio

from app.config import ProfileSettings
from app.core import Outcome, Record
from app.kafka.producer import Deliveries, Failure
from app.observability.metrics import Metrics
from app.profile import ProducerProfile


class FakeProducer:
    def __init__(self, *, queue_capacity: int = 1_000_000, deliver: bool = True) -> None:
        self.lock = threading.Lock()
        self.queue: list[tuple[str, Record]] = []
        self.delivered: list[tuple[str, Record]] = []
        self.queue_capacity = queue_capacity
        self.deliver = deliver
        self.client_errors: list[tuple[str, str, bool]] = []  # reported by the next poll
        self.statistics: str | None = None  # librdkafka's statistics, as KafkaProducer keeps them

    def produce(
        self, topic: str, records: Sequence[Record], start: int = 0, *, waited: float = 0.0
    ) -> tuple[int, list[Failure]]:
        with self.lock:
            for index in range(start, len(records)):
                if len(self.queue) >= self.queue_capacity:
                    return index, []
                self.queue.append((topic, records[index]))
        return len(records), []

    def poll(self, timeout: float) -> Deliveries:
        time.sleep(0.001)
        out = Deliveries()
        out.client_errors, self.client_errors = self.client_errors, []
        if not self.deliver:
            return out
        with self.lock:
            queue, self.queue = self.queue, []
        for topic, record in queue:
            if record.value.startswith(b"bad") and not topic.endswith(".dlq"):
                out.failures.append(Failure(topic, record, "MSG_SIZE_TOO_LARGE", "too large"))
            elif record.value.startswith(b"late") and not topic.endswith(".dlq"):
                out.failures.append(Failure(topic, record, "_MSG_TIMED_OUT", "timed out"))
            else:
                out.delivered[topic] += 1
                out.delivered_bytes += record.size
                out.latencies.setdefault(topic, []).append(0.002)
                self.delivered.append((topic, record))
        return out

    def flush(self, timeout: float) -> tuple[Deliveries, int]:
        deadline = time.monotonic() + timeout
        out = self.poll(0)
        while not self.deliver and self.queue and time.monotonic() < deadline:
            time.sleep(0.01)
        return out, len(self.queue)

    def topics(self, timeout: float) -> set[str]:
        return {"logs"}

    def queued(self) -> int:
        with self.lock:
            return len(self.queue)


def record(value: bytes = b"v" * 10) -> Record:
    return Record(b"key", value, [("event-id", b"1")])


def make_profile(fake: FakeProducer, **overrides: Any) -> tuple[ProducerProfile, Metrics]:
    metrics = Metrics()
    settings = ProfileSettings(topic="logs", **overrides)
    return ProducerProfile("application", settings, fake, metrics, flush_timeout=2.0), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


def test_every_series_the_seed_queries_is_exported_before_the_first_event() -> None:
    _, metrics = make_profile(FakeProducer())
    labels = {"service": "application", "topic": "logs"}
    assert metrics.registry.get_sample_value("kafka_producer_send_duration_seconds_count", labels) == 0.0
    assert metrics.registry.get_sample_value("kafka_producer_dead_letter_total", labels) == 0.0
    assert metrics.registry.get_sample_value("kafka_producer_lost_total", {"service": "application"}) == 0.0


async def test_accepted_events_are_produced_and_settled() -> None:
    fake = FakeProducer()
    profile, metrics = make_profile(fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        records = [record() for _ in range(5)]
        assert profile.submit(records, sum(r.size for r in records)) is Outcome.ACCEPTED
        await wait_until(lambda: profile.buffered_events == 0)
        assert profile.buffered_bytes == 0
        assert sample(metrics, "kafka_producer_success_total", service="application", topic="logs") == 5
        profile.close()
    assert [t for t, _ in fake.delivered] == ["logs"] * 5


@pytest.mark.parametrize(("limits", "second"), [({"buffer_events": 3}, 2), ({"buffer_bytes": 40}, 2)])
async def test_the_buffer_refuses_whole_requests_past_its_bound(limits: dict[str, int], second: int) -> None:
    fake = FakeProducer(deliver=False)
    profile, metrics = make_profile(fake, **limits)
    two = [record(), record()]  # 2 events, 26 bytes
    assert profile.submit(two, 26) is Outcome.ACCEPTED
    assert profile.submit([record()] * second, 13 * second) is Outcome.FULL
    assert (profile.buffered_events, profile.buffered_bytes) == (2, 26)
    assert sample(metrics, "producer_rejected_total", service="application", reason="full") == second
    assert profile.fill() > 0.5


async def test_refused_records_go_to_the_dead_letter_topic_with_the_error() -> None:
    fake = FakeProducer()
    profile, metrics = make_profile(fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        records = [record(b"bad-one"), record(b"good")]
        profile.submit(records, sum(r.size for r in records))
        await wait_until(lambda: profile.buffered_events == 0)
        profile.close()
    dead = [(t, r) for t, r in fake.delivered if t == "logs.dlq"]
    assert len(dead) == 1
    headers = dict(dead[0][1].headers)
    assert headers["dlq-error"] == b"MSG_SIZE_TOO_LARGE"
    assert headers["dlq-original-topic"] == b"logs"
    assert headers["event-id"] == b"1"
    assert sample(metrics, "kafka_producer_dead_letter_total", service="application", topic="logs") == 1
    assert sample(metrics, "kafka_producer_error_total", service="application", topic="logs", error="MSG_SIZE_TOO_LARGE") == 1


@pytest.mark.parametrize(("value", "opens"), [(b"bad", False), (b"late", True)])
async def test_only_failures_that_speak_of_kafka_open_the_breaker(
    value: bytes, opens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeProducer()
    profile, _ = make_profile(fake)
    trips: list[str] = []
    trip = profile.breaker.trip

    def recorded_trip(reason: str) -> None:
        trips.append(reason)
        trip(reason)

    monkeypatch.setattr(profile.breaker, "trip", recorded_trip)
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        records = [record(value) for _ in range(12)]
        assert profile.submit(records, sum(r.size for r in records)) is Outcome.ACCEPTED
        await wait_until(lambda: profile.buffered_events == 0)
        profile.close()
    # (The dead letters' own deliveries then close it again.)
    assert trips[:1] == (["10 consecutive delivery failures, last: _MSG_TIMED_OUT"] if opens else [])
    assert len([t for t, _ in fake.delivered if t == "logs.dlq"]) == 12


async def test_a_full_librdkafka_queue_is_waited_out_not_dropped() -> None:
    fake = FakeProducer(queue_capacity=2)
    profile, _ = make_profile(fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        records = [record() for _ in range(50)]
        profile.submit(records, sum(r.size for r in records))
        await wait_until(lambda: profile.buffered_events == 0)
        profile.close()
    assert len(fake.delivered) == 50


async def test_close_drains_everything_accepted_then_refuses() -> None:
    fake = FakeProducer(queue_capacity=1)
    profile, metrics = make_profile(fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        for _ in range(20):
            profile.submit([record()], 13)
        profile.close()
        assert profile.submit([record()], 13) is Outcome.CLOSED
    assert len(fake.delivered) == 20
    assert profile.buffered_events == 0
    assert sample(metrics, "kafka_producer_lost_total", service="application") == 0


async def test_close_gives_up_at_the_flush_deadline_and_counts_the_loss() -> None:
    fake = FakeProducer(deliver=False)
    profile, metrics = make_profile(fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        profile.submit([record(), record()], 26)
        await trio.sleep(0.05)
        started = trio.current_time()
        profile.close()
    assert trio.current_time() - started < 6.0
    assert sample(metrics, "kafka_producer_lost_total", service="application") == 2


async def test_a_fatal_error_opens_the_breaker_and_replaces_the_producer() -> None:
    old, new = FakeProducer(deliver=False), FakeProducer()
    old.client_errors.append(("_FENCED", "fenced by a newer producer", True))
    metrics = Metrics()
    profile = ProducerProfile(
        "application", ProfileSettings(topic="logs"), old, metrics,
        flush_timeout=2.0, recreate=lambda: new,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(profile.run)
        await wait_until(lambda: profile.breaker.state.name == "OPEN")
        assert profile.submit([record()], 13) is Outcome.UNAVAILABLE
        profile.breaker.probe_succeeded()
        assert profile.submit([record()], 13) is Outcome.ACCEPTED
        await wait_until(lambda: profile.buffered_events == 0)
        profile.close()
    assert len(new.delivered) == 1, "the new producer took the records after the fatal error"
    assert profile.last_client_error == "_FENCED: fenced by a newer producer"
