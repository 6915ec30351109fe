"""The gateway on 8080 routes to the shippers in-process; proven by reading Kafka back."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from app.runtime import Runtime
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


async def test_seed_scenario_100_single_logs_through_the_gateway(gateway: Runtime, kafka: KafkaReader) -> None:
    accepted: dict[str, str] = {}

    async def send(client: httpx.AsyncClient, i: int) -> None:
        response = await client.post(
            "/api/v1/logs", json={"source": "test", "level": "INFO", "message": f"Test {i}"}
        )
        assert response.status_code == 202, response.text
        accepted[response.json()["eventId"]] = f"Test {i}"

    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        async with trio.open_nursery() as nursery:
            for i in range(1, 101):
                nursery.start_soon(send, client, i)
    assert len(accepted) == 100

    records = await kafka.read(gateway.profiles["application"].topic, count=100, settle=1.0)
    assert len(records) == 100, "no event lost, none duplicated"
    for record in records:
        event_id = record.headers["event-id"].decode()
        value = json.loads(record.value)
        assert value["eventId"] == event_id
        assert value["message"] == accepted[event_id]
        assert record.key == b"test"
        assert "traceparent" in record.headers
    # One source, one key: all its events share a partition, in the order they were accepted.
    assert len({r.partition for r in records}) == 1
    offsets = [r.offset for r in records]
    assert offsets == sorted(offsets)


async def test_the_gateway_batch_route_is_the_shipper_route(gateway: Runtime, kafka: KafkaReader) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        response = await client.post(
            "/api/v1/logs/batch", json={"logs": [{"source": "a", "level": "INFO", "message": "via 8080"}]}
        )
        refused = await client.post("/api/v1/logs/batch", json={"logs": [{"source": "a"}]})
    assert response.status_code == 202
    assert refused.status_code == 422
    [record] = await kafka.read(gateway.profiles["application"].topic, count=1, settle=0.5)
    assert record.headers["event-id"].decode() == response.json()["eventIds"][0]
