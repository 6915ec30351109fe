"""The gateway in front of shippers that run as processes of their own.

Two application-shipper processes and one process hosting the transaction and
infrastructure shippers; a gateway-only runtime forwards to them. Delivery is proven by
reading Kafka back; balancing by each instance's own request counter.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio

from app.config import Settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader
from tests.processes import GatewayProcess, free_port

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclasses.dataclass
class Split:
    gateway: Runtime
    applications: list[GatewayProcess]
    others: GatewayProcess


@pytest.fixture
async def split(settings: Settings, gateway_env: dict[str, str]) -> AsyncIterator[Split]:
    env = {**gateway_env, "LOG_LEVEL": "WARNING", "APPLICATION_RATE_LIMIT": "1", "MAX_BATCH_EVENTS": "50"}
    applications = [GatewayProcess(env, args=["--role", "application"]) for _ in range(2)]
    others = GatewayProcess(env, args=["--role", "transaction,infrastructure"])
    dead = f"http://127.0.0.1:{free_port()}"  # an instance that refuses connections
    try:
        async with trio.open_nursery() as starting:
            for process in applications:
                starting.start_soon(process.start, "application")
            starting.start_soon(others.start, "transaction")
        gateway_only = dataclasses.replace(
            settings,
            roles="gateway",
            application_urls=",".join([applications[0].url("application"), dead, applications[1].url("application")]),
            transaction_urls=others.url("transaction"),
            infrastructure_urls=others.url("infrastructure"),
        )
        async with trio.open_nursery() as nursery:
            runtime: Runtime = await nursery.start(partial(run, gateway_only, handle_signals=False))
            await wait_ready(runtime.url("gateway"))
            yield Split(runtime, applications, others)
            runtime.shutdown()
    finally:
        for process in [*applications, others]:
            await process.close()


def served(metrics_text: str, route: str, status: str) -> float:
    pattern = rf'^http_requests_total\{{listener="application",route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    match = re.search(pattern, metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_logs_through_the_gateway_reach_kafka_balanced_across_instances(split: Split, kafka: KafkaReader) -> None:
    assert set(split.gateway.addresses) == {"gateway"}, "this process hosts the gateway alone"
    async with httpx.AsyncClient(base_url=split.gateway.url("gateway")) as client:
        answers = [
            await client.post("/api/v1/logs", json={"source": f"svc-{n}", "level": "INFO", "message": f"m{n}"})
            for n in range(40)
        ]
        traced = await client.post(
            "/api/v1/logs", json={"source": "traced", "level": "WARN", "message": "t"}, headers={"traceparent": TRACEPARENT}
        )
    assert [a.status_code for a in answers] == [202] * 40
    assert traced.status_code == 202 and traced.headers["content-type"] == "application/json"
    assert traced.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c", "trace context passed back"
    ids = {a.json()["eventId"] for a in answers} | {traced.json()["eventId"]}

    records = await kafka.read(split.gateway.settings.application.topic, count=41, settle=1.0)
    assert {r.headers["event-id"].decode() for r in records} == ids
    by_id = {r.headers["event-id"].decode(): r for r in records}
    assert by_id[traced.json()["eventId"]].headers["traceparent"].decode().split("-")[1] == "0af7651916cd43dd8448eb211c80319c"

    counts = []
    for process in split.applications:
        counts.append(served(httpx.get(f"{process.url('application')}/metrics").text, "/api/v1/logs", "202"))
    assert sum(counts) == 41
    assert min(counts) >= 10, f"both instances took a share: {counts}"


async def test_refusals_pass_through_with_their_retry_after(split: Split, kafka: KafkaReader) -> None:
    batch = {"logs": [{"source": "burst", "level": "INFO", "message": str(n)} for n in range(50)]}
    async with httpx.AsyncClient(base_url=split.gateway.url("gateway")) as client:
        answers = [await client.post("/api/v1/logs/batch", json=batch) for _ in range(10)]
        too_many = await client.post("/api/v1/logs/batch", json={"logs": batch["logs"] * 2})
        unsupported = await client.post("/api/v1/logs", content=b"x", headers={"Content-Type": "text/plain"})
    limited = [a for a in answers if a.status_code == 429]
    accepted = [a for a in answers if a.status_code == 202]
    # Each instance holds one batch of tokens and refills an event a second: one batch each, whatever the pace.
    assert len(accepted) == 2 and len(limited) == 8, [a.status_code for a in answers]
    assert all(int(a.headers["retry-after"]) >= 1 and a.json()["error"] == "rate limited" for a in limited)
    assert too_many.status_code == 413 and too_many.json()["error"] == "too many events"
    assert unsupported.status_code == 415

    ids = {i for a in accepted for i in a.json()["eventIds"]}
    records = await kafka.read(split.gateway.settings.application.topic, count=len(ids), settle=1.0)
    assert {r.headers["event-id"].decode() for r in records} == ids, "refused batches left nothing behind"


async def test_transactions_and_metrics_are_forwarded_to_their_shipper(split: Split, kafka: KafkaReader) -> None:
    settings = split.gateway.settings
    async with httpx.AsyncClient(base_url=split.gateway.url("gateway")) as client:
        tx = {"userId": "u-1", "type": "PAYMENT", "amount": "12.50", "currency": "EUR"}
        first = await client.post("/api/v1/transactions", json=tx, headers={"Idempotency-Key": "remote-1"})
        again = await client.post("/api/v1/transactions", json=tx, headers={"Idempotency-Key": "remote-1"})
        conflict = await client.post(
            "/api/v1/transactions", json={**tx, "amount": "13.00"}, headers={"Idempotency-Key": "remote-1"}
        )
        metric = await client.post("/api/v1/metrics", json={"host": "db-1", "metric": "system.load_average", "value": 0.5})
        event_id = first.json()["eventId"]
        with trio.fail_after(30):
            while (status := await client.get(f"/api/v1/transactions/{event_id}")).json()["status"] != "published":
                await trio.sleep(0.2)
        missing = await client.get("/api/v1/transactions/no-such-event")
    assert first.status_code == 202 and again.status_code == 202 and again.json()["eventId"] == event_id
    assert conflict.status_code == 409
    assert metric.status_code == 202
    assert status.status_code == 200 and status.json()["topic"] == settings.transaction.topic
    assert missing.status_code == 404

    transactions = await kafka.read(settings.transaction.topic, count=1, settle=1.0)
    assert [r.headers["event-id"].decode() for r in transactions] == [event_id]
    samples = await kafka.read(settings.infrastructure.topic, count=1)
    assert [json.loads(r.value)["host"] for r in samples] == ["db-1"]


async def test_the_gateway_rides_out_a_stopped_instance_and_reports_readiness(split: Split, kafka: KafkaReader) -> None:
    await split.applications[0].kill()
    async with httpx.AsyncClient(base_url=split.gateway.url("gateway")) as client:
        answers = [
            await client.post("/api/v1/logs", json={"source": "s", "level": "INFO", "message": str(n)}) for n in range(20)
        ]
        assert [a.status_code for a in answers] == [202] * 20, "refused connections moved on to the live instance"
        assert (await client.get("/ready")).status_code == 200
        # Stopped gracefully: a SIGKILL would lose what it accepted and had not yet sent (logs are acks=1).
        assert await split.applications[1].stop() == 0
        refused = await client.post("/api/v1/logs", json={"source": "s", "level": "INFO", "message": "none left"})
        not_ready = await client.get("/ready")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "upstream unavailable"
    assert not_ready.status_code == 503 and "application shipper not ready" in " ".join(not_ready.json()["reasons"])
    ids = {a.json()["eventId"] for a in answers}
    records = await kafka.read(split.gateway.settings.application.topic, count=20, settle=0.5)
    assert {r.headers["event-id"].decode() for r in records} == ids
