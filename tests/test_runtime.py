"""The process as a whole: readiness without Kafka, backpressure, and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial

import httpx
import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run, topic_specs
from tests.conftest import ROOT, unique_topics_env, wait_ready
from tests.kafka_reader import KafkaReader
from tests.processes import free_port

pytestmark = pytest.mark.integration


def no_kafka_env(**extra: str) -> dict[str, str]:
    return {
        "HOST": "127.0.0.1",
        "GATEWAY_PORT": "0",
        "APPLICATION_PORT": "0",
        "INFRASTRUCTURE_PORT": "0",
        "TRANSACTION_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "READY_TIMEOUT": "0.5",
        "FLUSH_TIMEOUT": "1",
        "GRACEFUL_TIMEOUT": "1",
        "SYSLOG_PORT": "0",
        "FORWARD_PORT": "0",
        "OTLP_GRPC_PORT": "0",
        **unique_topics_env(),
        **extra,
    }


async def test_without_kafka_the_process_is_alive_but_not_ready() -> None:
    settings = load_settings(no_kafka_env())
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        async with httpx.AsyncClient() as client:
            for listener in runtime.addresses:
                url = runtime.url(listener)
                assert (await client.get(f"{url}/health")).status_code == 200
                with trio.fail_after(5):
                    ready = await client.get(f"{url}/ready")
                assert ready.status_code == 503
                assert ready.json()["reasons"], ready.text
        runtime.shutdown()


async def black_hole_broker(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accepts connections and never answers: events stay in flight, and no breaker trips."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(hold, listeners, handler_nursery=nursery)


async def test_a_full_buffer_answers_503_with_retry_after_at_once() -> None:
    event = {"source": "a", "level": "INFO", "message": "m"}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(black_hole_broker)
        settings = load_settings(
            no_kafka_env(APPLICATION_BUFFER_EVENTS="5", KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
        )
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
            for _ in range(5):
                assert (await client.post("/api/v1/logs", json=event)).status_code == 202
            started = trio.current_time()
            refused = await client.post("/api/v1/logs", json=event)
            elapsed = trio.current_time() - started
            batch = await client.post("/api/v1/logs/batch", json={"logs": [event]})
            export = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "m"}}]}]}]}
            otlp = await client.post("/v1/logs", json=export)
        assert refused.status_code == 503 and batch.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "buffer full"
        assert elapsed < 1.0
        # OTLP/HTTP's own terms: 503 with Retry-After, and a google.rpc.Status (14, UNAVAILABLE) body.
        assert otlp.status_code == 503 and otlp.headers["Retry-After"] == "1"
        assert otlp.json()["code"] == 14 and "buffer is full" in otlp.json()["message"]
        runtime.shutdown()
        with trio.fail_after(10):
            while not runtime.metrics.registry.get_sample_value("kafka_producer_lost_total", {"service": "application"}):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    metrics = runtime.metrics.registry
    assert metrics.get_sample_value("producer_rejected_total", {"service": "application", "reason": "full"}) == 3
    # Never delivered (no broker) and the flush deadline passed: counted, not hidden.
    assert metrics.get_sample_value("kafka_producer_lost_total", {"service": "application"}) == 5


async def test_sigterm_during_a_stream_loses_no_accepted_event(gateway_env: dict[str, str], kafka: KafkaReader) -> None:
    ports = {name: str(free_port()) for name in ("GATEWAY_PORT", "APPLICATION_PORT", "INFRASTRUCTURE_PORT", "TRANSACTION_PORT")}
    env = {**os.environ, **gateway_env, **ports, "GRACEFUL_TIMEOUT": "3"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "app"], env=env, cwd=str(ROOT), stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{ports['APPLICATION_PORT']}"
        await wait_ready(url)
        accepted: list[str] = []
        refused = 0
        stop_sending = trio.Event()

        async def stream(client: httpx.AsyncClient, worker: int) -> None:
            nonlocal refused
            i = 0
            while not stop_sending.is_set():
                i += 1
                try:
                    response = await client.post(
                        "/api/v1/logs/batch",
                        json={"logs": [{"source": f"w{worker}", "level": "INFO", "message": f"{i}-{j}"} for j in range(5)]},
                    )
                except httpx.TransportError:
                    return
                if response.status_code == 202:
                    accepted.extend(response.json()["eventIds"])
                else:
                    refused += 1

        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with trio.open_nursery() as nursery:
                for worker in range(4):
                    nursery.start_soon(stream, client, worker)
                with trio.fail_after(30):
                    while len(accepted) < 500:
                        await trio.sleep(0.01)
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    code = await process.wait()
                stop_sending.set()
        assert code == 0
        assert len(accepted) >= 500
        expected = set(accepted)
        records = await kafka.read(
            gateway_env["APPLICATION_TOPIC"],
            until=lambda rs: expected <= {r.headers["event-id"].decode() for r in rs},
            timeout=60,
            settle=1.0,
        )
        written = [r.headers["event-id"].decode() for r in records]
        assert expected - set(written) == set(), "an event answered 202 is missing from Kafka"
        assert len(written) == len(set(written)), "an event was written twice"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_only_the_channel_profiles_get_a_dead_letter_topic() -> None:
    settings = load_settings(unique_topics_env())
    names = {spec.name for spec in topic_specs(settings)}
    assert names == {
        settings.application.topic, settings.application.dead_letter_topic,
        settings.infrastructure.topic, settings.infrastructure.dead_letter_topic,
        settings.transaction.topic, settings.checkpoint_topic,
    }, "the relay writes no dead letters: no transaction .dlq topic is created"


def test_a_syslog_topic_of_its_own_is_created_with_its_dead_letter_topic() -> None:
    env = unique_topics_env()
    plain = {spec.name for spec in topic_specs(load_settings(env))}
    syslog_topic = env["APPLICATION_TOPIC"].replace("application-logs", "syslog")
    settings = load_settings({**env, "SYSLOG_TOPIC": syslog_topic})
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert set(specs) == plain | {syslog_topic, f"{syslog_topic}.dlq"}
    assert specs[syslog_topic].partitions == specs[f"{syslog_topic}.dlq"].partitions == settings.topic_partitions
    # The application stream's own topic named again: nothing apart, nothing more to create.
    same = load_settings({**env, "SYSLOG_TOPIC": env["APPLICATION_TOPIC"]})
    assert {spec.name for spec in topic_specs(same)} == plain


async def test_without_kafka_the_syslog_stream_holds_the_application_listener_back_too() -> None:
    env = no_kafka_env()
    settings = load_settings({**env, "SYSLOG_TOPIC": env["APPLICATION_TOPIC"].replace("application-logs", "syslog")})
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        assert set(runtime.profiles) == {"application", "infrastructure", "syslog"}
        assert runtime.profiles["syslog"].topic == settings.syslog_topic
        assert runtime.profiles["syslog"].dead_letter_topic == f"{settings.syslog_topic}.dlq"
        async with httpx.AsyncClient() as client:
            for listener in ("application", "gateway"):
                with trio.fail_after(10):
                    ready = await client.get(f"{runtime.url(listener)}/ready")
                assert ready.status_code == 503
                reasons = ready.json()["reasons"]
                assert any(reason.startswith("syslog: ") for reason in reasons), reasons
        runtime.shutdown()
