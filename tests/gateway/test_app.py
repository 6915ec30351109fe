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
    # One source, one key: all its events share a partition.
    assert len({r.partition for r in records}) == 1


async def test_a_batch_reaches_each_sources_partition_in_the_order_sent(gateway: Runtime, kafka: KafkaReader) -> None:
    """The events of one request are produced in the order of the body, each source's on its partition.

    That is the order there is for logs: with acks=1, retries and no idempotence, a produce request
    the broker fails and librdkafka sends again can land behind a later one (docs/guarantees.md says so).
    The broker here fails none.
    """
    sources = ("checkout", "search", "billing")
    logs = [{"source": sources[i % 3], "level": "INFO", "message": f"step {i}"} for i in range(90)]
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        response = await client.post("/api/v1/logs/batch", json={"logs": logs})
    assert response.status_code == 202, response.text

    records = await kafka.read(gateway.profiles["application"].topic, count=90, settle=1.0)
    assert len(records) == 90
    by_offset = sorted(records, key=lambda r: (r.partition, r.offset))
    for source in sources:
        mine = [r for r in by_offset if r.key == source.encode()]
        assert len({r.partition for r in mine}) == 1, source
        assert [json.loads(r.value)["message"] for r in mine] == [
            log["message"] for log in logs if log["source"] == source
        ], source


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
