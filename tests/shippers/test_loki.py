"""Loki push: python-logging-loki (a real Loki client, on a ``logging`` logger) for JSON, and
snappy-compressed protobuf pushes built with Loki's own PushRequest, against the gateway, proven
by reading Kafka back.

python-logging-loki posts from the logging call itself (requests): it runs in worker threads,
the gateway being served by this test's trio loop.
"""

from __future__ import annotations

import gzip
import json
import logging
import uuid
from functools import partial
from typing import Any

import cramjam
import httpx
import logging_loki
import pytest
import trio

from app.config import load_settings
from app.proto.loki.push_pb2 import PushRequest
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration

PROTOBUF = "application/x-protobuf"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("listener", ["application", "gateway"])
async def test_python_logging_loki_records_reach_kafka_exactly(gateway: Runtime, kafka: KafkaReader, listener: str) -> None:
    service = unique("checkout")
    handler = logging_loki.LokiHandler(
        url=f"{gateway.url(listener)}/loki/api/v1/push", tags={"service_name": service, "env": "test"}, version="1"
    )
    logger = logging.getLogger(f"tests.loki.{service}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    failures: list[logging.LogRecord] = []
    handler.handleError = failures.append  # any answer but 204 lands here
    count = 200

    def log() -> None:
        for i in range(count):
            (logger.warning if i % 4 == 0 else logger.info)("order %d shipped", i)

    try:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(log)
    finally:
        logger.removeHandler(handler)
        handler.emitter.close()
    assert failures == []
    records = await kafka.read(gateway.profiles["application"].topic, count=count, settle=1.0, timeout=60)
    values = [json.loads(record.value) for record in records]
    assert sorted(v["message"] for v in values) == sorted(f"order {i} shipped" for i in range(count))
    assert {record.key for record in records} == {service.encode()}
    assert len({v["eventId"] for v in values}) == count
    by_message = {v["message"]: v for v in values}
    warned = by_message["order 0 shipped"]
    assert warned["level"] == "WARN" and by_message["order 1 shipped"]["level"] == "INFO"
    labels = warned["attributes"]["labels"]
    assert labels == {"service_name": service, "env": "test", "severity": "warning", "logger": logger.name}
    assert warned["attributes"]["timestampNs"].isdigit() and len(warned["attributes"]["timestampNs"]) == 19


def push_request(service: str) -> tuple[PushRequest, list[dict[str, Any]]]:
    """Two streams, nanosecond timestamps, structured metadata: the request and what each line must become."""
    request = PushRequest()
    expected: list[dict[str, Any]] = []
    for stream_number, level in enumerate(("info", "error")):
        labels = {"service_name": service, "level": level, "pod": f'api-{stream_number} "blue"'}
        stream = request.streams.add(labels="{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "}")
        for i in range(3):
            nanoseconds = 1_764_064_800_123_456_789 + 1_000 * stream_number + i
            entry = stream.entries.add(line=f"{level} line {i}")
            entry.timestamp.FromNanoseconds(nanoseconds)
            metadata = {"trace_id": f"t{stream_number}{i}"} if i else {}
            if i == 2:
                metadata["detected_level"] = "warn"
            for name, value in metadata.items():
                entry.structuredMetadata.add(name=name, value=value)
            expected.append({
                "message": f"{level} line {i}", "level": "WARN" if i == 2 else level.upper(), "labels": labels,
                "timestampNs": str(nanoseconds), "metadata": metadata,
            })
    return request, expected


@pytest.mark.parametrize("listener", ["application", "gateway"])
async def test_snappy_protobuf_pushes_reach_kafka_exactly(gateway: Runtime, kafka: KafkaReader, listener: str) -> None:
    service = unique("api")
    request, expected = push_request(service)
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    async with httpx.AsyncClient(base_url=gateway.url(listener)) as client:
        answer = await client.post("/loki/api/v1/push", content=body, headers={"Content-Type": PROTOBUF})
        assert (answer.status_code, answer.content) == (204, b"")
        # Snappy said as a Content-Encoding (some clients do): the same request again.
        again = await client.post(
            "/loki/api/v1/push", content=body, headers={"Content-Type": PROTOBUF, "Content-Encoding": "snappy"}
        )
        assert again.status_code == 204
    records = await kafka.read(gateway.profiles["application"].topic, count=2 * len(expected), settle=1.0)
    values = [json.loads(record.value) for record in records]
    assert {record.key for record in records} == {service.encode()}
    for want in expected:
        matching = [v for v in values if v["message"] == want["message"] and v["attributes"]["labels"] == want["labels"]]
        assert len(matching) == 2, want["message"]
        for value in matching:
            assert value["level"] == want["level"]
            assert value["attributes"]["timestampNs"] == want["timestampNs"], "the nanoseconds kept exactly"
            assert value["attributes"].get("structuredMetadata", {}) == want["metadata"]
            microseconds = int(want["timestampNs"]) // 1000
            assert value["timestamp"] == "2025-11-25T10:00:00.{:06d}Z".format(microseconds % 1_000_000)


async def test_a_rate_limit_is_loki_s_429_with_retry_after_and_a_retry_is_taken(
    gateway_env: dict[str, str], kafka: KafkaReader
) -> None:
    """What Promtail and Alloy expect: 429 (retried after a backoff), plain text; nothing of the
    refused push is written, and the retry is."""
    env = {**gateway_env, "APPLICATION_RATE_LIMIT": "6", "MAX_BATCH_EVENTS": "6"}
    service = unique("limited")
    request, expected = push_request(service)
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        await wait_ready(runtime.url("application"))
        async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
            first = await client.post("/loki/api/v1/push", content=body, headers={"Content-Type": PROTOBUF})
            second = await client.post("/loki/api/v1/push", content=body, headers={"Content-Type": PROTOBUF})
            assert first.status_code == 204
            assert second.status_code == 429 and second.headers["Content-Type"].startswith("text/plain")
            assert second.text.startswith("rate limited") and int(second.headers["Retry-After"]) >= 1
            await trio.sleep(int(second.headers["Retry-After"]))
            retried = await client.post("/loki/api/v1/push", content=body, headers={"Content-Type": PROTOBUF})
            assert retried.status_code == 204
            malformed = await client.post("/loki/api/v1/push", content=b"not snappy", headers={"Content-Type": PROTOBUF})
            assert malformed.status_code == 400 and malformed.text.startswith("malformed snappy body")
        records = await kafka.read(runtime.profiles["application"].topic, count=2 * len(expected), settle=1.0)
        runtime.shutdown()
    assert len(records) == 2 * len(expected)


async def test_gzip_json_pushes(gateway: Runtime, kafka: KafkaReader) -> None:
    service = unique("gz")
    document = {"streams": [{"stream": {"app": service}, "values": [["1764064800000000001", "zipped", {"user": "u1"}]]}]}
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        answer = await client.post(
            "/loki/api/v1/push", content=gzip.compress(json.dumps(document).encode()),
            headers={"Content-Type": "application/json; charset=utf-8", "Content-Encoding": "gzip"},
        )
    assert answer.status_code == 204
    [record] = await kafka.read(gateway.profiles["application"].topic, count=1, settle=1.0)
    value = json.loads(record.value)
    assert (record.key, value["message"]) == (service.encode(), "zipped")
    assert value["attributes"] == {"labels": {"app": service}, "structuredMetadata": {"user": "u1"}, "timestampNs": "1764064800000000001"}
