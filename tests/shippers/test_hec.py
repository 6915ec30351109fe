"""Splunk HEC: splunk-handler (a real HEC client, on a ``logging`` logger) and the indexer
acknowledgement, against the gateway, proven by reading Kafka back.

splunk-handler sends with requests from its own thread (and from the caller's on flush and
close): those calls run in worker threads, the gateway being served by this test's trio loop.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from splunk_handler import SplunkHandler

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def splunk_handler(runtime: Runtime, listener: str, source: str, **options: Any) -> SplunkHandler:
    """The handler as docs/agents.md configures it: plain HTTP to the gateway, any token while keys are off."""
    host, port = runtime.url(listener).removeprefix("http://").rsplit(":", 1)
    return SplunkHandler(
        host=host, port=int(port), protocol="http", verify=False, token="any-token", index="main",
        source=source, sourcetype="python", hostname="billing-7", **options,
    )


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(f"tests.hec.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


@pytest.mark.parametrize("listener", ["application", "gateway"])
async def test_splunk_handler_records_reach_kafka_exactly(gateway: Runtime, kafka: KafkaReader, listener: str) -> None:
    source = unique("billing")
    handler = splunk_handler(gateway, listener, source, flush_interval=0.2, force_keep_ahead=True, queue_size=1_000)
    logger = logger_with(handler, source)
    count = 500

    def log_and_close() -> None:
        for i in range(count):
            logger.info("payment %d settled", i)
        handler.close()  # sends what is queued and waits until the queue is empty

    try:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(log_and_close)
    finally:
        logger.removeHandler(handler)

    records = await kafka.read(gateway.profiles["application"].topic, count=count, settle=1.0, timeout=60)
    values = [json.loads(record.value) for record in records]
    assert sorted(value["message"] for value in values) == sorted(f"payment {i} settled" for i in range(count))
    assert {record.key for record in records} == {source.encode()}
    assert len({value["eventId"] for value in values}) == count
    first = values[0]
    assert first["level"] == "INFO" and first["source"] == source
    assert first["attributes"] == {"host": "billing-7", "source": source, "sourcetype": "python", "index": "main"}
    assert first["timestamp"].endswith("Z")


async def test_splunk_handler_waits_out_a_busy_server_and_nothing_is_lost_or_doubled(
    gateway_env: dict[str, str], kafka: KafkaReader
) -> None:
    """A rate limit is HEC's 503 "Server is busy" with Retry-After, which splunk-handler's retries
    (urllib3's, for 500, 502, 503 and 504) wait out: every record arrives once."""
    env = {**gateway_env, "APPLICATION_RATE_LIMIT": "20", "MAX_BATCH_EVENTS": "20"}
    source = unique("busy")
    count = 60
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        await wait_ready(runtime.url("application"))
        # flush_interval=0: each record is sent at once, from the logging call.
        handler = splunk_handler(runtime, "application", source, flush_interval=0, retry_count=10, retry_backoff=0.5)
        logger = logger_with(handler, source)

        def log() -> None:
            for i in range(count):
                logger.info("charge %d", i)
            handler.close()

        try:
            with trio.fail_after(60):
                await trio.to_thread.run_sync(log)
        finally:
            logger.removeHandler(handler)
        registry = runtime.metrics.registry
        busy = registry.get_sample_value(
            "http_requests_total", {"listener": "application", "route": "/services/collector/event", "status": "503"}
        )
        assert busy and busy >= 1, "the rate limit answered 503 at least once"
        records = await kafka.read(runtime.profiles["application"].topic, count=count, settle=1.0, timeout=60)
        runtime.shutdown()
    messages = sorted(json.loads(record.value)["message"] for record in records)
    assert messages == sorted(f"charge {i}" for i in range(count))


async def test_a_rate_limit_is_server_is_busy_with_retry_after(gateway_env: dict[str, str]) -> None:
    env = {**gateway_env, "APPLICATION_RATE_LIMIT": "5", "MAX_BATCH_EVENTS": "5"}
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        await wait_ready(runtime.url("application"))
        async with httpx.AsyncClient(base_url=runtime.url("gateway"), headers={"Authorization": "Splunk t"}) as client:
            body = b'{"event":"x"}' * 5
            first = await client.post("/services/collector/event", content=body)
            second = await client.post("/services/collector/event", content=body)
        runtime.shutdown()
    assert (first.status_code, first.json()) == (200, {"text": "Success", "code": 0})
    assert (second.status_code, second.json()) == (503, {"text": "Server is busy", "code": 9})
    assert int(second.headers["Retry-After"]) >= 1


async def test_api_keys_are_hec_tokens(gateway_env: dict[str, str], kafka: KafkaReader) -> None:
    env = {**gateway_env, "API_KEYS": "team-a:hec-secret"}
    source = unique("keyed")
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        await wait_ready(runtime.url("application"))
        event = json.dumps({"event": "hello", "source": source}).encode()
        async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
            answers = {
                name: await client.post("/services/collector/event", content=event, headers=headers)
                for name, headers in {
                    "none": {}, "scheme": {"Authorization": "Token hec-secret"},
                    "wrong": {"Authorization": "Splunk nope"}, "right": {"Authorization": "Splunk hec-secret"},
                }.items()
            }
        records = await kafka.read(runtime.profiles["application"].topic, count=1, settle=1.0)
        runtime.shutdown()
    assert (answers["none"].status_code, answers["none"].json()) == (401, {"text": "Token is required", "code": 2})
    assert (answers["scheme"].status_code, answers["scheme"].json()) == (401, {"text": "Invalid authorization", "code": 3})
    assert (answers["wrong"].status_code, answers["wrong"].json()) == (403, {"text": "Invalid token", "code": 4})
    assert (answers["right"].status_code, answers["right"].json()) == (200, {"text": "Success", "code": 0})
    assert [record.key for record in records] == [source.encode()]


@pytest.fixture
async def small_topic_gateway(gateway: Runtime, kafka: KafkaReader) -> AsyncIterator[Runtime]:
    """The gateway with its application topic taking records of at most 2000 bytes: a larger one
    is refused by the broker for good, so its request is never acknowledged."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    resource = ConfigResource(
        ResourceType.TOPIC,
        gateway.settings.application.topic,
        incremental_configs=[ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=10)
    yield gateway


async def acks(client: httpx.AsyncClient, channel: str, ids: list[int]) -> dict[str, bool]:
    answer = await client.post("/services/collector/ack", json={"acks": ids}, headers={"X-Splunk-Request-Channel": channel})
    assert answer.status_code == 200, answer.text
    answered = answer.json()["acks"]
    assert isinstance(answered, dict), answered
    return answered


async def test_an_ack_id_is_true_only_once_kafka_has_the_records(small_topic_gateway: Runtime, kafka: KafkaReader) -> None:
    runtime = small_topic_gateway
    topic = runtime.settings.application.topic
    channel = str(uuid.uuid4())
    source = unique("acked")
    headers = {"Authorization": "Splunk t", "X-Splunk-Request-Channel": channel}
    async with (
        httpx.AsyncClient(base_url=runtime.url("application"), headers=headers) as application,
        httpx.AsyncClient(base_url=runtime.url("gateway"), headers=headers) as gateway,
    ):
        events = "".join(json.dumps({"event": f"fits {i}", "source": source}) for i in range(3))
        sent = await application.post("/services/collector/event", content=events)
        assert sent.status_code == 200 and sent.json()["text"] == "Success"
        small = sent.json()["ackId"]
        if (await acks(application, channel, [small]))[str(small)]:
            # Already acknowledged: then Kafka has the records already.
            assert len(await kafka.read(topic, count=3, timeout=5)) == 3
            acknowledged_before_read = True
        else:
            acknowledged_before_read = False
        records = await kafka.read(topic, count=3, settle=0.5)
        assert sorted(json.loads(r.value)["message"] for r in records) == ["fits 0", "fits 1", "fits 2"]
        if not acknowledged_before_read:
            with trio.fail_after(10):
                while not (await acks(gateway, channel, [small]))[str(small)]:  # the 8080 listener knows it too
                    await trio.sleep(0.05)
        assert await acks(application, channel, [small]) == {str(small): False}, "answered true once, then forgotten"

        # A record the broker refuses (too large for the topic) is dead-lettered: never acknowledged.
        noise = secrets.token_hex(5_000)
        refused = await gateway.post("/services/collector/raw", content=noise, params={"source": source})
        assert refused.status_code == 200
        large = refused.json()["ackId"]
        assert large > small
        [dead] = await kafka.read(runtime.settings.application.dead_letter_topic, count=1, settle=0.5)
        assert json.loads(dead.value)["message"] == noise
        for _ in range(5):
            assert await acks(application, channel, [large, large + 1000]) == {str(large): False, str(large + 1000): False}
            await trio.sleep(0.2)
        other = await acks(application, str(uuid.uuid4()), [small, large])
        assert other == {str(small): False, str(large): False}, "ids belong to their channel"

        missing = await application.post("/services/collector/ack", json={"acks": [1]}, headers={"X-Splunk-Request-Channel": ""})
        assert (missing.status_code, missing.json()) == (400, {"text": "Data channel is missing", "code": 10})


async def test_raw_and_health_on_both_listeners(gateway: Runtime, kafka: KafkaReader) -> None:
    source = unique("raw")
    for listener in ("application", "gateway"):
        async with httpx.AsyncClient(base_url=gateway.url(listener)) as client:
            for path in ("/services/collector/health", "/services/collector/health/1.0"):
                health = await client.get(path)
                assert (health.status_code, health.json()) == (200, {"text": "HEC is healthy", "code": 17})
            raw = await client.post(
                "/services/collector/raw", content=f"{listener} one\r\n\r\n{listener} two\n",
                params={"source": source, "sourcetype": "syslog", "host": "h1"}, headers={"Authorization": "Splunk t"},
            )
            assert (raw.status_code, raw.json()) == (200, {"text": "Success", "code": 0})
    records = await kafka.read(gateway.profiles["application"].topic, count=4, settle=1.0)
    values = sorted((json.loads(r.value) for r in records), key=lambda v: v["message"])
    assert [v["message"] for v in values] == ["application one", "application two", "gateway one", "gateway two"]
    assert values[0]["attributes"] == {"host": "h1", "source": source, "sourcetype": "syslog"}
