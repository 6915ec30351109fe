"""The application-log shipper on 8081, proven by reading Kafka back."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest

from app.runtime import Runtime
from tests.kafka_reader import KafkaReader

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

pytestmark = pytest.mark.integration


async def test_seed_batch_of_three_lands_in_kafka_keyed_by_source(gateway: Runtime, kafka: KafkaReader) -> None:
    body: dict[str, list[dict[str, Any]]] = {
        "logs": [
            {"source": "app-1", "level": "INFO", "message": "Msg 1"},
            {"source": "app-2", "level": "WARN", "message": "Msg 2"},
            {"source": "app-3", "level": "error", "message": "Msg 3", "attributes": {"user": "u1"}},
        ]
    }
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        response = await client.post("/api/v1/logs/batch", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "accepted" and answer["count"] == 3
    ids = answer["eventIds"]
    assert len(set(ids)) == 3
    assert response.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")

    records = await kafka.read(gateway.profiles["application"].topic, count=3, settle=1.0)
    assert len(records) == 3
    by_id = {r.headers["event-id"].decode(): r for r in records}
    assert set(by_id) == set(ids)
    for event_id, sent in zip(ids, body["logs"]):
        record = by_id[event_id]
        value = json.loads(record.value)
        assert record.key == sent["source"].encode()
        assert value["eventId"] == event_id
        assert value["source"] == sent["source"]
        assert value["level"] == sent["level"].upper()
        assert value["message"] == sent["message"]
        assert value["receivedAt"] and value["timestamp"] == value["receivedAt"]
        assert record.headers["traceparent"].decode() == response.headers["traceparent"]
    assert json.loads(by_id[ids[2]].value)["attributes"] == {"user": "u1"}


async def test_single_log_keeps_its_timestamp_and_trace_id(gateway: Runtime, kafka: KafkaReader) -> None:
    event = {"source": "billing", "level": "debug", "message": "hello", "timestamp": "2026-11-25T10:00:00Z", "traceId": "abc"}
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        response = await client.post("/api/v1/logs", json=event)
    assert response.status_code == 202
    event_id = response.json()["eventId"]
    [record] = await kafka.read(gateway.profiles["application"].topic, count=1, settle=0.5)
    value = json.loads(record.value)
    assert (value["eventId"], value["timestamp"], value["traceId"], value["level"]) == (
        event_id, "2026-11-25T10:00:00Z", "abc", "DEBUG",
    )
    assert record.headers["traceparent"].decode() == response.headers["traceparent"]


async def test_ndjson_and_gzip_batches(gateway: Runtime, kafka: KafkaReader) -> None:
    lines = "\n".join(json.dumps({"source": f"s{i}", "level": "INFO", "message": f"m{i}"}) for i in range(50))
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        plain = await client.post(
            "/api/v1/logs/batch", content=lines.encode(), headers={"Content-Type": "application/x-ndjson"}
        )
        zipped = await client.post(
            "/api/v1/logs/batch",
            content=gzip.compress(json.dumps({"logs": [json.loads(x) for x in lines.splitlines()]}).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert plain.status_code == 202 and zipped.status_code == 202
    ids = set(plain.json()["eventIds"]) | set(zipped.json()["eventIds"])
    assert len(ids) == 100
    records = await kafka.read(gateway.profiles["application"].topic, count=100, settle=0.5)
    assert {r.headers["event-id"].decode() for r in records} == ids


async def test_every_bad_input_is_refused_and_produces_nothing(gateway: Runtime, kafka: KafkaReader) -> None:
    good = {"source": "a", "level": "INFO", "message": "m"}
    bomb = gzip.compress(b'{"logs":[' + b" " * 40_000_000 + b"]}")
    cases: list[tuple[str, dict[str, Any], int]] = [  # httpx's keyword arguments
        ("/api/v1/logs", {"content": b'{"source": "a",', "headers": {"Content-Type": "application/json"}}, 400),
        ("/api/v1/logs", {"content": b"not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("/api/v1/logs/batch", {"content": b'{"logs": [1,}', "headers": {"Content-Type": "application/json"}}, 400),
        ("/api/v1/logs/batch", {"content": b"xx", "headers": {"Content-Type": "application/json", "Content-Encoding": "gzip"}}, 400),
        ("/api/v1/logs", {"content": json.dumps(good).encode(), "headers": {"Content-Type": "text/plain"}}, 415),
        ("/api/v1/logs", {"content": json.dumps(good).encode(), "headers": {}}, 415),
        ("/api/v1/logs", {"content": json.dumps(good).encode(), "headers": {"Content-Type": "application/json", "Content-Encoding": "br"}}, 415),
        ("/api/v1/logs", {"json": {**good, "level": "LOUD"}}, 422),
        ("/api/v1/logs", {"json": {"source": "a", "level": "INFO"}}, 422),
        ("/api/v1/logs", {"json": {**good, "unknown": 1}}, 422),
        ("/api/v1/logs/batch", {"json": {"logs": [good, {**good, "level": "x"}, good]}}, 422),
        ("/api/v1/logs/batch", {"json": {"logs": []}}, 422),
        ("/api/v1/logs/batch", {"json": {"logs": [good] * 10_001}}, 413),
        ("/api/v1/logs", {"json": {**good, "message": "x" * (2 * 1024 * 1024)}}, 413),
        ("/api/v1/logs/batch", {"content": b"x" * (11 * 1024 * 1024), "headers": {"Content-Type": "application/json"}}, 413),
        ("/api/v1/logs/batch", {"content": bomb, "headers": {"Content-Type": "application/json", "Content-Encoding": "gzip"}}, 413),
    ]
    async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=30) as client:
        for path, kwargs, status in cases:
            response = await client.post(path, **kwargs)
            assert response.status_code == status, (path, status, response.text[:300])
            error = response.json()
            assert isinstance(error["error"], str) and "detail" in error, error
        refused = await client.post(
            "/api/v1/logs/batch", json={"logs": [good, {"level": "x"}, good, {}]}, headers={"traceparent": TRACEPARENT}
        )
        assert [d["index"] for d in refused.json()["detail"]] == [1, 3]
        # The refusal continues the caller's trace, as an answer that took the events would.
        assert refused.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert (await client.get("/api/v1/logs")).status_code == 405
        assert (await client.post("/api/v1/nothing", json=good)).json()["error"] == "not found"
        sentinel = await client.post("/api/v1/logs", json={**good, "message": "sentinel"})
    assert sentinel.status_code == 202
    records = await kafka.read(gateway.profiles["application"].topic, count=1, settle=2.0)
    assert [json.loads(r.value)["message"] for r in records] == ["sentinel"]


async def test_health_ready_and_metrics_on_every_listener(gateway: Runtime) -> None:
    async with httpx.AsyncClient() as client:
        for listener in ("gateway", "application", "infrastructure", "transaction"):
            url = gateway.url(listener)
            assert (await client.get(f"{url}/health")).json()["status"] == "alive"
            ready = await client.get(f"{url}/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
            metrics = await client.get(f"{url}/metrics")
            assert metrics.status_code == 200
            assert "process_resident_memory_bytes" in metrics.text
            assert "kafka_producer_success_total" in metrics.text
