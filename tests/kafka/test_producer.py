"""The adapter's bookkeeping of delivery reports (pure logic: the reports are made here)."""

from dataclasses import dataclass

import pytest

from app.core import Record, Tally
from app.kafka.producer import KafkaProducer


@dataclass
class Report:
    """What a delivery report's message offers the adapter."""

    name: str
    seconds: float | None

    def topic(self) -> str:
        return self.name

    def latency(self) -> float | None:
        return self.seconds


def test_the_reported_latency_counts_the_wait_in_the_buffer() -> None:
    producer = KafkaProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    waited, prompt = Record(b"k", b"v" * 10, []), Record(b"k", b"v", [])
    waited.waited = 0.25
    for record, report in ((waited, Report("logs", 0.01)), (prompt, Report("logs", 0.02)), (prompt, Report("logs", None))):
        record.tally = producer._tallies.setdefault("logs", Tally("logs"))
        record(None, report)
    deliveries = producer._collect()
    assert deliveries.delivered["logs"] == 3
    assert deliveries.latencies["logs"] == [pytest.approx(0.26), pytest.approx(0.02)]
    assert deliveries.delivered_bytes == 11 + 2 + 2
    assert producer._collect().delivered == {}, "a collect empties the tallies"


class Refusal:
    def name(self) -> str:
        return "MSG_SIZE_TOO_LARGE"

    def str(self) -> str:
        return "too large"

    def fatal(self) -> bool:
        return False


def test_a_failed_report_comes_back_as_a_failure_of_its_record_and_topic() -> None:
    producer = KafkaProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    refused, taken = Record(b"k", b"big", []), Record(b"k", b"v", [])
    for record, topic in ((refused, "logs"), (taken, "logs.dlq")):
        record.tally = producer._tallies.setdefault(topic, Tally(topic))
    refused(Refusal(), Report("logs", None))
    taken(None, Report("logs.dlq", 0.01))
    deliveries = producer._collect()
    [failure] = deliveries.failures
    assert (failure.topic, failure.record, failure.error, failure.reason, failure.fatal) == (
        "logs", refused, "MSG_SIZE_TOO_LARGE", "too large", False
    )
    assert deliveries.delivered == {"logs.dlq": 1}
    assert (deliveries.settled, deliveries.settled_bytes) == (2, 4 + 2)
