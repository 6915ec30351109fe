"""The transaction shipper: committed in PostgreSQL, then in Kafka once; proven by reading both."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import psycopg
import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader
from tests.processes import free_port

pytestmark = pytest.mark.integration

PAYMENT = {"userId": "user-123", "type": "PAYMENT", "amount": 99.99, "currency": "USD"}


def topic(gateway: Runtime) -> str:
    return gateway.settings.transaction.topic


def outbox_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
    assert row is not None
    return int(row[0])


async def published(client: httpx.AsyncClient, event_id: str, timeout: float = 30) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            status = (await client.get(f"/api/v1/transactions/{event_id}")).json()
            assert isinstance(status, dict), status
            if status["status"] == "published":
                return status
            await trio.sleep(0.1)


async def test_seed_transaction_through_the_gateway_lands_once_with_its_exact_amount(
    gateway: Runtime, kafka: KafkaReader
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        response = await client.post("/api/v1/transactions", content=json.dumps(PAYMENT), headers={"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
        event_id = response.json()["eventId"]
        status = await published(client, event_id)
    [record] = await kafka.read(topic(gateway), count=1, settle=1.0)
    value = json.loads(record.value)
    assert value["eventId"] == event_id
    assert value["amount"] == "99.99"
    assert (value["userId"], value["type"], value["currency"]) == ("user-123", "PAYMENT", "USD")
    assert record.key == b"user-123"
    assert record.headers["event-id"].decode() == event_id
    assert record.headers["traceparent"].decode() == response.headers["traceparent"]
    assert (status["partition"], status["offset"]) == (record.partition, record.offset)
    assert status["topic"] == topic(gateway)


async def test_idempotency_keys(gateway: Runtime, kafka: KafkaReader) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("transaction")) as client:
        first = await client.post("/api/v1/transactions", json=PAYMENT, headers={"Idempotency-Key": "order-1"})
        again = await client.post("/api/v1/transactions", json=PAYMENT, headers={"Idempotency-Key": "order-1"})
        other = await client.post(
            "/api/v1/transactions", json={**PAYMENT, "amount": 10}, headers={"Idempotency-Key": "order-1"}
        )
        fresh = await client.post("/api/v1/transactions", json=PAYMENT, headers={"Idempotency-Key": "order-2"})
    assert first.status_code == 202 and again.status_code == 202 and fresh.status_code == 202
    assert again.json()["eventId"] == first.json()["eventId"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert other.status_code == 409 and other.json()["error"] == "idempotency key conflict"
    assert fresh.json()["eventId"] != first.json()["eventId"]
    records = await kafka.read(topic(gateway), count=2, settle=2.0)
    assert sorted(r.headers["event-id"].decode() for r in records) == sorted(
        [first.json()["eventId"], fresh.json()["eventId"]]
    )


async def test_amounts_keep_their_exact_decimal_value(gateway: Runtime, kafka: KafkaReader) -> None:
    cases = [
        ('{"userId":"u","type":"DEPOSIT","amount":0.1,"currency":"USD"}', "0.10"),
        ('{"userId":"u","type":"DEPOSIT","amount":1234567890123456789.12,"currency":"EUR"}', "1234567890123456789.12"),
        ('{"userId":"u","type":"DEPOSIT","amount":"5.125","currency":"BHD"}', "5.125"),
        ('{"userId":"u","type":"refund","amount":1500,"currency":"jpy"}', "1500"),
    ]
    ids = {}
    async with httpx.AsyncClient(base_url=gateway.url("transaction")) as client:
        for body, expected in cases:
            response = await client.post(
                "/api/v1/transactions", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 202, response.text
            ids[response.json()["eventId"]] = expected
    records = await kafka.read(topic(gateway), count=len(cases), settle=1.0)
    assert {json.loads(r.value)["eventId"]: json.loads(r.value)["amount"] for r in records} == ids


async def test_batches_are_all_or_nothing(gateway: Runtime, kafka: KafkaReader) -> None:
    items = [{**PAYMENT, "userId": f"u{i}", "idempotencyKey": f"b-{i}"} for i in range(5)]
    async with httpx.AsyncClient(base_url=gateway.url("transaction")) as client:
        invalid = await client.post("/api/v1/transactions/batch", json={"transactions": [*items[:2], {**PAYMENT, "amount": 1.001}]})
        assert invalid.status_code == 422 and invalid.json()["detail"][0]["index"] == 2
        accepted = await client.post("/api/v1/transactions/batch", json={"transactions": items})
        assert accepted.status_code == 202, accepted.text
        ids = accepted.json()["eventIds"]
        assert accepted.json()["count"] == 5
        # One key reused with another body: the whole batch is refused, its new rows too.
        conflicting = await client.post(
            "/api/v1/transactions/batch",
            json={"transactions": [{**PAYMENT, "userId": "new", "idempotencyKey": "b-new"}, {**items[0], "amount": 1}]},
        )
        assert conflicting.status_code == 409
        assert (await client.post("/api/v1/transactions", json=PAYMENT, headers={"Idempotency-Key": "b-new"})).status_code == 202
    records = await kafka.read(topic(gateway), count=6, settle=2.0)
    assert len(records) == 6
    by_id = {r.headers["event-id"].decode(): json.loads(r.value) for r in records}
    assert [by_id[event_id]["userId"] for event_id in ids] == [f"u{i}" for i in range(5)]


async def test_bad_input_is_refused_and_nothing_is_stored(gateway: Runtime, database_url: str) -> None:
    cases: list[tuple[dict[str, Any], int]] = [
        ({"content": b'{"userId":', "headers": {"Content-Type": "application/json"}}, 400),
        ({"content": json.dumps(PAYMENT).encode(), "headers": {"Content-Type": "text/plain"}}, 415),
        ({"content": b"x" * (11 * 1024 * 1024), "headers": {"Content-Type": "application/json"}}, 413),
        ({"json": {**PAYMENT, "type": "GIFT"}}, 422),
        ({"json": {**PAYMENT, "amount": -5}}, 422),
        ({"json": {**PAYMENT, "amount": 0}}, 422),
        ({"json": {**PAYMENT, "amount": 1.999}}, 422),
        ({"json": {**PAYMENT, "currency": "ZZZ"}}, 422),
        ({"json": {**PAYMENT, "amount": "NaN"}}, 422),
        ({"json": {**PAYMENT, "extra": True}}, 422),
        ({"json": {"userId": "u", "type": "PAYMENT", "currency": "USD"}}, 422),
        ({"json": PAYMENT, "headers": {"Idempotency-Key": "k" * 300}}, 400),
    ]
    async with httpx.AsyncClient(base_url=gateway.url("transaction"), timeout=30) as client:
        for kwargs, status in cases:
            response = await client.post("/api/v1/transactions", **kwargs)
            assert response.status_code == status, (kwargs.get("json"), response.text[:200])
            assert "error" in response.json()
        assert (await client.get("/api/v1/transactions/not-a-uuid")).status_code == 404
        assert (await client.get("/api/v1/transactions/6a34718f-6872-458c-87f0-8856cba5e556")).status_code == 404
    assert outbox_rows(database_url) == 0


async def test_503_with_retry_after_when_the_backlog_is_over_its_limit(gateway_env: dict[str, str]) -> None:
    # Kafka unreachable: nothing is published, so the backlog only grows.
    settings = load_settings(
        {**gateway_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "OUTBOX_MAX_PENDING": "3"}
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        await wait_ready(runtime.url("transaction"))
        async with httpx.AsyncClient(base_url=runtime.url("transaction")) as client:
            answers = [(await client.post("/api/v1/transactions", json=PAYMENT)).status_code for _ in range(3)]
            refused = await client.post("/api/v1/transactions", json=PAYMENT)
        assert answers == [202, 202, 202]
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "backlog" in refused.json()["detail"]
        runtime.shutdown()


async def test_503_at_once_when_postgresql_is_unreachable(gateway_env: dict[str, str]) -> None:
    settings = load_settings(
        {**gateway_env, "DATABASE_URL": f"postgresql://gateway:gateway@127.0.0.1:{free_port()}/gateway"}
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        async with httpx.AsyncClient(base_url=runtime.url("transaction")) as client:
            started = trio.current_time()
            refused = await client.post("/api/v1/transactions", json=PAYMENT)
            elapsed = trio.current_time() - started
            ready = await client.get("/ready")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "database unavailable" in refused.json()["detail"]
        assert elapsed < 2.0
        assert ready.status_code == 503
        runtime.shutdown()
