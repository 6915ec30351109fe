"""Consumer lag in /metrics: the collector alone, then a real consumer group paused and resumed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import confluent_kafka
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from app.kafka.lag import LagReading, PartitionLag
from app.observability.consumer_lag import ConsumerLag
from app.runtime import Runtime
from tests.conftest import Infra


def samples(text: str, name: str) -> dict[tuple[str, str, str], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[sample.labels["group"], sample.labels["topic"], sample.labels["partition"]] = sample.value
    return found


def test_the_collector_exports_the_latest_reading_and_ages_the_oldest_record() -> None:
    now = [1000.0]
    lag = ConsumerLag(clock=lambda: now[0])
    lag.update(
        LagReading(
            [
                PartitionLag("log-processors", "application-logs", 0, committed=4, end=10, oldest_timestamp=990.0),
                PartitionLag("log-processors", "application-logs", 1, committed=7, end=7),
                PartitionLag("audit", "transaction-logs", 2, committed=1, end=3),  # timestamp not read in time
            ],
            groups_asked=2, groups_known=2, failures=0,
        )
    )
    families = {family.name: family for family in lag.collect()}
    assert {s.labels["partition"]: s.value for s in families["kafka_consumergroup_lag"].samples} == {
        "0": 6, "1": 0, "2": 2,
    }
    assert {s.labels["partition"]: s.value for s in families["kafka_consumergroup_lag_seconds"].samples} == {
        "0": 10.0, "1": 0.0,
    }
    now[0] = 1005.0  # the wait grows between two readings
    families = {family.name: family for family in lag.collect()}
    assert families["kafka_consumergroup_lag_seconds"].samples[0].value == 15.0
    lag.fail()  # a round that read nothing shows nothing rather than an old reading
    families = {family.name: family for family in lag.collect()}
    assert families["kafka_consumergroup_lag"].samples == []
    assert families["kafka_consumergroup_lag_errors"].samples[0].value == 1


GROUP = f"log-processors-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gateway_env(gateway_env: dict[str, str]) -> dict[str, str]:
    """Lag read every half second, of every group of the cluster (the default)."""
    return {**gateway_env, "LAG_INTERVAL": "0.5"}


class Processor:
    """A log processor of the reference design's: a confluent-kafka consumer in group GROUP."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": GROUP,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topic])
        self.consumed = 0

    def consume(self, count: int, timeout: float = 30.0) -> None:
        """Consume ``count`` records and commit (blocking)."""
        end = time.monotonic() + timeout
        wanted = self.consumed + count
        while self.consumed < wanted:
            assert time.monotonic() < end, f"consumed {self.consumed} of {wanted}"
            for message in self.consumer.consume(num_messages=100, timeout=0.2):
                if message.error() is None:
                    self.consumed += 1
        self.consumer.commit(asynchronous=False)

    def pause(self) -> None:
        self.consumer.pause(self.consumer.assignment())

    def resume(self) -> None:
        self.consumer.resume(self.consumer.assignment())

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def processor(infra: Infra, gateway: Runtime) -> Iterator[Processor]:
    processor = Processor(infra.kafka_bootstrap_servers, gateway.profiles["application"].topic)
    yield processor
    processor.close()
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": infra.kafka_bootstrap_servers})
    admin.delete_consumer_groups([GROUP])[GROUP].result(30)


async def post_logs(client: httpx.AsyncClient, count: int, tag: str) -> None:
    logs: list[dict[str, Any]] = [
        {"source": f"s{i % 5}", "level": "INFO", "message": f"{tag} {i}"} for i in range(count)
    ]
    response = await client.post("/api/v1/logs/batch", json={"logs": logs})
    assert response.status_code == 202, response.text


@pytest.mark.integration
async def test_a_paused_group_shows_its_lag_rise_and_fall_in_metrics(gateway: Runtime, processor: Processor) -> None:
    topic = gateway.profiles["application"].topic
    async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=10) as client:

        async def wait_for(expected_lag: int, aged: bool, timeout: float = 30) -> dict[tuple[str, str, str], float]:
            with trio.fail_after(timeout):
                while True:
                    text = (await client.get("/metrics")).text
                    lag = {k: v for k, v in samples(text, "kafka_consumergroup_lag").items() if k[0] == GROUP}
                    ages = {k: v for k, v in samples(text, "kafka_consumergroup_lag_seconds").items() if k[0] == GROUP}
                    if lag and {key[1] for key in lag} == {topic} and sum(lag.values()) == expected_lag:
                        if aged == any(age > 0 for age in ages.values()):
                            return ages
                    await trio.sleep(0.2)

        await post_logs(client, 20, "before")
        await trio.to_thread.run_sync(processor.consume, 20)
        await wait_for(0, aged=False)

        await trio.to_thread.run_sync(processor.pause)
        await post_logs(client, 30, "while paused")
        await trio.sleep(1.0)  # the records wait: their age shows
        ages = await wait_for(30, aged=True)
        assert 0 < max(ages.values()) < 60

        # The reference design's name for it, on the actuator too.
        actuator = (
            await client.get("/actuator/metrics/kafka.consumergroup.lag", params={"tag": f"group:{GROUP}"})
        ).json()
        assert actuator["measurements"] == [{"statistic": "VALUE", "value": 30.0}]

        await trio.to_thread.run_sync(processor.resume)
        await trio.to_thread.run_sync(processor.consume, 30)
        await wait_for(0, aged=False)
