"""Records the broker refuses for good go to the dead-letter topic; real broker."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from app.runtime import Runtime
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


async def test_a_record_too_large_for_its_topic_lands_in_the_dead_letter_topic_with_its_error(
    gateway: Runtime, kafka: KafkaReader
) -> None:
    topic = gateway.settings.application.topic
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=10)

    noise = secrets.token_hex(10_000)  # incompressible: lz4 cannot bring it under the limit
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        small = await client.post("/api/v1/logs", json={"source": "a", "level": "INFO", "message": "fits"})
        # Delivered alone: the broker refuses whole batches, so the two must not share one.
        await kafka.read(topic, count=1)
        large = await client.post("/api/v1/logs", json={"source": "a", "level": "INFO", "message": noise})
    assert small.status_code == 202 and large.status_code == 202

    [dead] = await kafka.read(gateway.settings.application.dead_letter_topic, count=1, settle=1.0)
    assert dead.headers["event-id"].decode() == large.json()["eventId"]
    assert dead.headers["dlq-error"] == b"MSG_SIZE_TOO_LARGE"
    assert dead.headers["dlq-original-topic"].decode() == topic
    assert json.loads(dead.value)["message"] == noise
    assert dead.key == b"a"
    [kept] = await kafka.read(topic, count=1, settle=1.0)
    assert kept.headers["event-id"].decode() == small.json()["eventId"]
    metrics = gateway.metrics.registry
    assert metrics.get_sample_value("kafka_producer_dead_letter_total", {"service": "application", "topic": topic}) == 1
    assert metrics.get_sample_value(
        "kafka_producer_error_total", {"service": "application", "topic": topic, "error": "MSG_SIZE_TOO_LARGE"}
    ) == 1
