"""The reference design's actuator calls against a running gateway: the runbook's curl lines answer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from app.runtime import Runtime
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration

V3 = "application/vnd.spring-boot.actuator.v3+json"


@pytest.fixture
def gateway_env(gateway_env: dict[str, str]) -> dict[str, str]:
    """librdkafka's statistics every half second, so that the request latency shows at once."""
    return {**gateway_env, "KAFKA_STATISTICS_INTERVAL_MS": "500"}


def measurement(body: dict[str, Any], statistic: str) -> float:
    (value,) = [m["value"] for m in body["measurements"] if m["statistic"] == statistic]
    return float(value)


async def test_the_runbooks_metric_calls_answer_in_spring_boots_shapes(gateway: Runtime, kafka: KafkaReader) -> None:
    topic = gateway.profiles["application"].topic
    async with httpx.AsyncClient(timeout=10) as client:
        application = gateway.url("application")
        logs = [{"source": "actuator", "level": "INFO", "message": f"m{i}"} for i in range(5)]
        assert (await client.post(f"{application}/api/v1/logs/batch", json={"logs": logs})).status_code == 202
        await kafka.read(topic, count=5)

        names = (await client.get(f"{application}/actuator/metrics")).json()["names"]
        assert {"producer.circuit.breaker", "kafka.producer.request-latency-avg", "producer.throttled",
                "kafka.producer.success", "kafka.producer.error"} <= set(names)

        with trio.fail_after(15):  # the delivery report reaches the counter after the record reaches Kafka
            while True:
                success = await client.get(f"{application}/actuator/metrics/kafka.producer.success")
                assert success.status_code == 200 and success.headers["Content-Type"] == V3
                if measurement(success.json(), "COUNT") == 5:
                    break
                await trio.sleep(0.1)
        body = success.json()
        assert body["name"] == "kafka.producer.success" and body["description"]
        # The application listener answers for its own service, as if filtered by ?tag=service:application.
        assert {t["tag"]: t["values"] for t in body["availableTags"]} == {"topic": [topic]}

        breaker = (await client.get(f"{application}/actuator/metrics/producer.circuit.breaker")).json()
        assert body_values(breaker) == {"VALUE": 0.0}
        assert body_values((await client.get(f"{application}/actuator/metrics/producer.throttled")).json()) == {
            "COUNT": 0.0
        }
        assert body_values((await client.get(f"{application}/actuator/metrics/kafka.producer.error")).json()) == {
            "COUNT": 0.0
        }
        with trio.fail_after(15):  # librdkafka's first statistics after a request
            while not (latency := (await client.get(
                f"{application}/actuator/metrics/kafka.producer.request-latency-avg"
            )).json())["measurements"]:
                await trio.sleep(0.2)
        assert latency["baseUnit"] == "milliseconds" and 0 < measurement(latency, "VALUE") < 5000

        # The gateway listener answers for every service; ?tag= narrows it, as in Spring Boot.
        gateway_url = gateway.url("gateway")
        every = (await client.get(f"{gateway_url}/actuator/metrics/producer.throttled")).json()
        assert {t["tag"]: t["values"] for t in every["availableTags"]}["service"] == [
            "application", "infrastructure", "transaction",
        ]
        narrowed = await client.get(
            f"{gateway_url}/actuator/metrics/kafka.producer.success",
            params=[("tag", "service:application"), ("tag", f"topic:{topic}")],
        )
        assert measurement(narrowed.json(), "COUNT") == 5 and narrowed.json()["availableTags"] == []

        unknown = await client.get(f"{application}/actuator/metrics/jvm.memory.used")
        assert unknown.status_code == 404 and unknown.json()["error"] == "not found"
        bad = await client.get(f"{application}/actuator/metrics/producer.throttled", params={"tag": "service"})
        assert bad.status_code == 400 and "key:value" in bad.json()["detail"]
        plain = await client.get(f"{application}/actuator/metrics", headers={"Accept": "application/json"})
        assert plain.headers["Content-Type"] == "application/json"


def body_values(body: dict[str, Any]) -> dict[str, float]:
    return {m["statistic"]: m["value"] for m in body["measurements"]}


async def test_health_shows_kafka_and_postgresql_as_components(gateway: Runtime) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for listener, components in (
            ("application", {"kafka"}), ("infrastructure", {"kafka"}), ("transaction", {"db"}), ("gateway", {"kafka"}),
        ):
            health = await client.get(f"{gateway.url(listener)}/actuator/health")
            assert health.status_code == 200, health.text
            assert health.json() == {"status": "UP", "components": {name: {"status": "UP"} for name in components}}
        application = gateway.url("application")
        assert (await client.get(f"{application}/actuator/health/kafka")).json() == {"status": "UP"}
        assert (await client.get(f"{application}/actuator/health/liveness")).json() == {"status": "UP"}
        assert (await client.get(f"{application}/actuator/health/readiness")).json() == {"status": "UP"}
        assert (await client.get(f"{application}/actuator/health/db")).status_code == 404
        links = (await client.get(f"{application}/actuator")).json()["_links"]
        assert links["metrics-requiredMetricName"] == {
            "href": f"{application}/actuator/metrics/{{requiredMetricName}}", "templated": True,
        }


async def test_actuator_prometheus_is_the_metrics_text(gateway: Runtime) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("infrastructure"), timeout=10) as client:
        actuator_text = (await client.get("/actuator/prometheus")).text
        metrics_text = (await client.get("/metrics")).text

    def families(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("# TYPE")]

    assert families(actuator_text) == families(metrics_text) and "kafka_producer_success" in actuator_text


async def test_every_listener_documents_its_actuator_endpoints(gateway: Runtime) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for listener in ("gateway", "application", "infrastructure", "transaction"):
            paths = (await client.get(f"{gateway.url(listener)}/openapi.json")).json()["paths"]
            assert {"/actuator", "/actuator/health", "/actuator/health/{path}", "/actuator/metrics",
                    "/actuator/metrics/{requiredMetricName}", "/actuator/prometheus"} <= set(paths), listener
