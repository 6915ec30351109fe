"""SYSLOG_TOPIC: syslog records in a topic of their own, read back from Kafka beside the application
topic: exactly once there and never in the application topic, their dead letters in that topic's
.dlq, through a spool of their own in disk mode, and drained at shutdown."""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from fluent import sender

from app.runtime import Runtime
from tests.kafka_reader import ConsumedRecord, KafkaReader
from tests.sockets.conftest import endpoint, marker, metric, socket_gateway
from tests.sockets.test_syslog import python_handler_sends

pytestmark = pytest.mark.integration


@pytest.fixture
def syslog_env(socket_env: dict[str, str]) -> dict[str, str]:
    # The test's own topic suffix: the session deletes it (and its .dlq) at the end.
    return {**socket_env, "SYSLOG_TOPIC": socket_env["APPLICATION_TOPIC"].replace("application-logs", "syslog")}


def fluent_logger_sends(address: tuple[str, int], tag: str, count: int) -> None:
    logger = sender.FluentSender("app", host=address[0], port=address[1], timeout=5)
    try:
        for index in range(count):
            assert logger.emit(tag, {"message": f"event {index}"}), logger.last_error
    finally:
        logger.close()


def by_key(records: list[ConsumedRecord]) -> dict[str, list[dict[str, Any]]]:
    keyed: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        keyed.setdefault((record.key or b"").decode(), []).append(json.loads(record.value))
    return keyed


def wait_for_topic_config(admin: AdminClient, topic: str, name: str, value: str, timeout: float = 15.0) -> None:
    """Until the broker answers with the altered value: a record produced before would not see it."""
    deadline = time.monotonic() + timeout
    while True:
        [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        if future.result(timeout=10)[name].value == value:
            return
        assert time.monotonic() < deadline, f"{topic}: {name} is not {value} after {timeout} s"
        time.sleep(0.2)


def event_ids(records: list[ConsumedRecord]) -> list[str]:
    return [record.headers["event-id"].decode() for record in records]


async def test_syslog_over_tcp_and_udp_goes_to_its_topic_and_everything_else_to_the_application_topic(
    syslog_env: dict[str, str], kafka: KafkaReader
) -> None:
    async with socket_gateway(syslog_env) as runtime:
        syslog_topic = syslog_env["SYSLOG_TOPIC"]
        application_topic = runtime.profiles["application"].topic
        assert runtime.profiles["syslog"].topic == syslog_topic
        topics = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10).topics
        assert {syslog_topic, f"{syslog_topic}.dlq"} <= set(topics), "created at start-up with the others"

        tcp, udp, http, forward = marker(), marker(), marker(), marker()
        await trio.to_thread.run_sync(python_handler_sends, endpoint(runtime, "syslog-tcp"), socket.SOCK_STREAM, tcp, 200)
        await trio.to_thread.run_sync(python_handler_sends, endpoint(runtime, "syslog-udp"), socket.SOCK_DGRAM, udp, 50)
        await trio.to_thread.run_sync(fluent_logger_sends, endpoint(runtime, "forward"), forward, 30)
        batch = [{"source": http, "level": "INFO", "message": f"http {i}"} for i in range(20)]
        async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
            answer = await client.post("/api/v1/logs/batch", json={"logs": batch})
        assert answer.status_code == 202, answer.text

        # Both topics are this test's alone: everything in them is counted.
        syslog_records = await kafka.read(syslog_topic, count=250, settle=2.0)
        application_records = await kafka.read(application_topic, count=50, settle=2.0)
        syslog_events = by_key(syslog_records)
        assert set(syslog_events) == {tcp, udp}
        assert sorted(e["message"] for e in syslog_events[tcp]) == sorted(f"message {i} from {tcp}" for i in range(200))
        assert sorted(e["message"] for e in syslog_events[udp]) == sorted(f"message {i} from {udp}" for i in range(50))
        assert len(set(event_ids(syslog_records))) == 250, "a syslog message was written twice"
        assert syslog_events[udp][0]["attributes"]["syslog"]["transport"] == "udp"

        application_events = by_key(application_records)
        assert set(application_events) == {http, f"app.{forward}"}, "no syslog message in the application topic"
        assert sorted(e["message"] for e in application_events[http]) == sorted(f"http {i}" for i in range(20))
        assert len(application_events[f"app.{forward}"]) == 30
        assert len(set(event_ids(application_records))) == 50

        # Counted apart, admitted under the application stream's rate limit.
        assert metric(runtime, "gateway_ingest_events_total", service="syslog", dialect="syslog", outcome="accepted") == 250
        assert metric(runtime, "gateway_ingest_events_total", service="application", dialect="syslog", outcome="accepted") == 0
        assert metric(runtime, "kafka_producer_success_total", service="syslog", topic=syslog_topic) == 250
        assert metric(runtime, "kafka_producer_success_total", service="application", topic=application_topic) == 50


async def test_syslog_dead_letters_go_to_the_syslog_topics_dlq(syslog_env: dict[str, str], kafka: KafkaReader) -> None:
    async with socket_gateway(syslog_env) as runtime:
        syslog_topic = syslog_env["SYSLOG_TOPIC"]
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        resource = ConfigResource(
            ResourceType.TOPIC,
            syslog_topic,
            incremental_configs=[ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=10)
        await trio.to_thread.run_sync(wait_for_topic_config, admin, syslog_topic, "max.message.bytes", "2000")

        app, noise = marker(), secrets.token_hex(10_000)  # incompressible: lz4 cannot bring it under the limit
        address = endpoint(runtime, "syslog-tcp")
        small = b"<14>1 - host %s - - - fits\n" % app.encode()
        large = b"<14>1 - host %s - - - %s\n" % (app.encode(), noise.encode())
        for line in (small, large):  # apart: the broker refuses whole batches
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(line)
            if line is small:
                await kafka.read(syslog_topic, count=1)

        [dead] = await kafka.read(f"{syslog_topic}.dlq", count=1, settle=1.0)
        assert dead.headers["dlq-error"] == b"MSG_SIZE_TOO_LARGE"
        assert dead.headers["dlq-original-topic"].decode() == syslog_topic
        assert json.loads(dead.value)["message"] == noise
        [kept] = await kafka.read(syslog_topic, count=1, settle=1.0)
        assert json.loads(kept.value)["message"] == "fits"
        assert metric(runtime, "kafka_producer_dead_letter_total", service="syslog", topic=syslog_topic) == 1
        application_topic = runtime.profiles["application"].topic
        assert metric(runtime, "kafka_producer_dead_letter_total", service="application", topic=application_topic) == 0


async def test_disk_mode_spools_syslog_apart_and_shutdown_drains_it(
    syslog_env: dict[str, str], kafka: KafkaReader, tmp_path: Path
) -> None:
    env = {**syslog_env, "APPLICATION_DURABILITY": "disk", "SPOOL_DIR": str(tmp_path), "GRACEFUL_TIMEOUT": "3"}
    key, http = marker(), marker()
    async with socket_gateway(env) as runtime:
        assert set(runtime.spools) == {"application", "syslog"}
        assert (tmp_path / "syslog.sqlite").exists()
        async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
            answer = await client.post("/api/v1/logs", json={"source": http, "level": "INFO", "message": "http"})
        assert answer.status_code == 202, answer.text
        stream = await trio.open_tcp_stream(*endpoint(runtime, "syslog-tcp"))
        await stream.send_all(b"".join(b"<13>1 - - %s - - - d%d\n" % (key.encode(), i) for i in range(2000)))
        runtime.shutdown()  # at once: the bytes sit in the socket, not yet read
    await stream.aclose()
    records = await kafka.read(env["SYSLOG_TOPIC"], count=2000, settle=2.0)
    assert sorted(json.loads(r.value)["message"] for r in records) == sorted(f"d{i}" for i in range(2000))
    assert len(set(event_ids(records))) == 2000
    # Each fsynced in its stream's own spool before it was taken.
    assert metric(runtime, "spool_fsync_duration_seconds_count", service="syslog") > 0
    assert metric(runtime, "spool_fsync_duration_seconds_count", service="application") > 0
    [only] = await kafka.read(runtime.profiles["application"].topic, count=1, settle=2.0)
    assert only.key == http.encode(), "no syslog message in the application topic"
