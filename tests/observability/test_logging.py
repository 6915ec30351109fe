"""The process's own log: JSON lines with the ids of the events they concern, bounded in volume."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from app.core import Record
from app.kafka.producer import Failure
from app.observability.tracing import continue_trace
from tests.kafka_reader import KafkaReader
from tests.processes import GatewayProcess
from tests.test_profile import FakeProducer, make_profile


def failure(n: int, topic: str = "logs", error: str = "_MSG_TIMED_OUT") -> Failure:
    trace = f"{n:032x}"
    headers = [("event-id", f"event-{n}".encode()), ("traceparent", f"00-{trace}-{n:016x}-01".encode())]
    return Failure(topic, Record(b"k", b"v", headers), error, "Local: Message timed out")


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.profile" and hasattr(r, "count")]


def extra(line: logging.LogRecord, *names: str) -> tuple[object, ...]:
    """The fields a log call's ``extra`` set on ``line``."""
    return tuple(vars(line)[name] for name in names)


async def test_failures_are_logged_once_per_kind_and_second_with_a_count_and_the_first_event(
    caplog: pytest.LogCaptureFixture, mock_clock: trio.testing.MockClock
) -> None:
    profile, _ = make_profile(FakeProducer())
    caplog.set_level(logging.WARNING, logger="app.profile")

    profile._settle_failures([failure(n) for n in range(5000)] + [failure(9, error="MSG_SIZE_TOO_LARGE")])
    lines = failure_lines(caplog)
    assert [extra(r, "error", "count", "event_id") for r in lines] == [
        ("_MSG_TIMED_OUT", 5000, "event-0"),
        ("MSG_SIZE_TOO_LARGE", 1, "event-9"),
    ]
    first = lines[0]
    assert extra(first, "service", "topic", "trace_id") == ("application", "logs", f"{0:032x}")
    assert first.getMessage() == (
        "application: 5000 events not delivered to logs (_MSG_TIMED_OUT: Local: Message timed out); "
        "writing them to logs.dlq"
    )

    caplog.clear()
    for _ in range(20):  # many batches within the second: no line, only counted
        mock_clock.jump(0.04)
        profile._settle_failures([failure(n) for n in range(100)])
    assert failure_lines(caplog) == []
    mock_clock.jump(1.0)
    profile._settle_failures([failure(7)])
    [line] = failure_lines(caplog)
    assert extra(line, "count", "event_id") == (2001, "event-7")


async def test_a_dead_letter_refused_for_good_is_logged_as_lost(caplog: pytest.LogCaptureFixture) -> None:
    profile, metrics = make_profile(FakeProducer())
    caplog.set_level(logging.WARNING, logger="app.profile")
    profile._settle_failures([failure(n, topic="logs.dlq", error="MSG_SIZE_TOO_LARGE") for n in range(3)])
    [line] = failure_lines(caplog)
    assert line.levelno == logging.ERROR
    assert extra(line, "count", "event_id", "topic") == (3, "event-0", "logs.dlq")
    assert metrics.registry.get_sample_value("kafka_producer_lost_total", {"service": "application"}) == 3


def max_message_bytes(admin: AdminClient, topic: str) -> str:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    [configs] = [future.result(timeout=10) for future in admin.describe_configs([resource]).values()]
    return str(configs["max.message.bytes"].value)


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert lines
    parsed = []
    for line in lines:
        entry = json.loads(line)  # every line, not only the app's own
        assert isinstance(entry, dict), line
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), line
        parsed.append(entry)
    return parsed


@pytest.mark.integration
async def test_the_process_logs_json_lines_and_a_dead_letter_names_its_event(
    gateway_env: dict[str, str], kafka: KafkaReader, tmp_path: Path
) -> None:
    log_path = tmp_path / "gateway.log"
    gateway = GatewayProcess(gateway_env, log_path=str(log_path))
    topic = gateway_env["APPLICATION_TOPIC"]
    try:
        await gateway.start("application")
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        resource = ConfigResource(
            ResourceType.TOPIC, topic,
            incremental_configs=[ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=10)
        with trio.fail_after(10):  # until the broker serves the new limit
            while max_message_bytes(admin, topic) != "2000":
                await trio.sleep(0.1)
        trace = continue_trace(None)
        async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=5) as client:
            # Delivered first, as in tests/test_dead_letters.py: the broker has applied the limit by then.
            small = await client.post("/api/v1/logs", json={"source": "a", "level": "INFO", "message": "fits"})
            assert small.status_code == 202
            await kafka.read(topic, count=1)
            large = await client.post(
                "/api/v1/logs", json={"source": "a", "level": "INFO", "message": secrets.token_hex(10_000)},
                headers={"traceparent": trace.traceparent},
            )
        assert large.status_code == 202
        [dead_letter] = await kafka.read(f"{topic}.dlq", count=1)
        assert dead_letter.headers["event-id"].decode() == large.json()["eventId"]
        assert await gateway.stop() == 0
    finally:
        await gateway.close()

    entries = json_lines(log_path)
    assert any(e["logger"] == "app.runtime" and "listening on" in e["message"] for e in entries)
    assert any(e["logger"] == "app.runtime" and e["message"] == "stopped" for e in entries)
    [dead] = [e for e in entries if e.get("event_id") == large.json()["eventId"]]
    assert dead["level"] == "WARNING" and dead["logger"] == "app.profile"
    assert (dead["service"], dead["topic"], dead["error"], dead["count"]) == (
        "application", topic, "MSG_SIZE_TOO_LARGE", 1
    )
    assert dead["trace_id"] == trace.trace_id
