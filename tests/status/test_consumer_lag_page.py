"""The status page's consumer lag card: a group left behind shows with its lag and its oldest record's wait."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import httpx
import pytest
import trio
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from app.runtime import Runtime
from tests.conftest import Infra
from tests.status.test_page import page_fields, status_json

pytestmark = pytest.mark.integration

GROUP = f"log-processors-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gateway_env(gateway_env: dict[str, str]) -> dict[str, str]:
    return {**gateway_env, "LAG_INTERVAL": "0.5", "LAG_GROUPS": GROUP}


@pytest.fixture
def admin(infra: Infra) -> Iterator[AdminClient]:
    admin = AdminClient({"bootstrap.servers": infra.kafka_bootstrap_servers})
    yield admin
    try:
        admin.delete_consumer_groups([GROUP])[GROUP].result(30)
    except confluent_kafka.KafkaException:
        pass  # never created: the test failed before


async def test_a_group_behind_shows_on_the_page(gateway: Runtime, admin: AdminClient, tmp_path: Path) -> None:
    topic = gateway.profiles["application"].topic
    async with httpx.AsyncClient(base_url=gateway.url("gateway"), timeout=10) as client:
        logs = [{"source": "lagging", "level": "INFO", "message": f"m{i}"} for i in range(12)]
        assert (await client.post("/api/v1/logs/batch", json={"logs": logs})).status_code == 202
        with trio.fail_after(15):
            while (await status_json(client))["services"]["application"]["acked"] < 12:
                await trio.sleep(0.1)
        # The group has read nothing of any partition: every record is behind.
        offsets = [TopicPartition(topic, partition, 0) for partition in range(3)]
        await trio.to_thread.run_sync(
            lambda: admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP, offsets)])[GROUP].result(30)
        )
        with trio.fail_after(15):
            while not (consumers := (await status_json(client))["consumers"]):
                await trio.sleep(0.2)
    assert [(c["group"], c["topic"], c["lag"]) for c in consumers] == [(GROUP, topic, 12)]
    assert consumers[0]["oldestAge"] > 0

    fields = await page_fields(f"{gateway.url('gateway')}/", tmp_path / "profile")
    assert fields[("consumers", "consumer-group")] == GROUP
    assert fields[("consumers", "consumer-topic")] == topic
    assert fields[("consumers", "consumer-lag")] == "12"
    assert fields[("consumers", "consumer-oldest")].endswith(" s")
    assert fields[("consumers", "consumer-count")] == "1 group"
