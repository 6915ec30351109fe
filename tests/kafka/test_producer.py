"""The adapter's bookkeeping of delivery reports (pure logic: the reports are made here)."""

from dataclasses import dataclass

import pytest

from app.kafka.producer import KafkaProducer, Record


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
        record.report = producer._reports.append
        record(None, report)
    deliveries = producer._collect()
    assert deliveries.delivered["logs"] == 3
    assert deliveries.latencies["logs"] == [pytest.approx(0.26), pytest.approx(0.02)]
    assert deliveries.delivered_bytes == 11 + 2 + 2
