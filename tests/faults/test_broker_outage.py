"""A broker outage during a stream of application logs; real broker, bounded in time."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest
import trio

from scripts.bench_support import percentile
from tests.conftest import PrivateKafka
from tests.kafka_reader import KafkaReader
from tests.processes import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def breaker_state(client: httpx.AsyncClient) -> float:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        if line.startswith('producer_circuit_breaker_state{service="application"}'):
            return float(line.split()[-1])
    raise AssertionError("no breaker state in /metrics")


async def test_the_breaker_opens_fast_and_closes_by_itself_and_nothing_accepted_is_lost(
    gateway_env: dict[str, str], private_kafka: PrivateKafka, tmp_path: object
) -> None:
    env = {
        **gateway_env,
        "KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap_servers,
        "BREAKER_OPEN_SECONDS": "1",
        "READY_TIMEOUT": "1",
        # Longer than the outage can last here (a stop, 5 s of samples, a cold JVM start on a busy machine):
        # records in flight when it began wait for the broker instead of being dead-lettered.
        "APPLICATION_DELIVERY_TIMEOUT_MS": "180000",
    }
    gateway = GatewayProcess(env, log_path=f"{tmp_path}/gateway.log")
    accepted: list[str] = []
    answers: list[tuple[str, int, float]] = []  # (phase, status, seconds)
    phase = "before"
    stop = trio.Event()

    async def stream(client: httpx.AsyncClient, worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            response = await client.post("/api/v1/logs", json={"source": f"w{worker}", "level": "INFO", "message": str(i)})
            answers.append((phase, response.status_code, time.monotonic() - started))
            if response.status_code == 202:
                accepted.append(response.json()["eventId"])
            else:
                assert response.status_code == 503 and response.headers["Retry-After"], response.text
                await trio.sleep(0.01)

    try:
        await gateway.start(ready_listener="application")
        assert gateway.process is not None
        process = psutil.Process(gateway.process.pid)
        async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=5) as client:
            async with trio.open_nursery() as nursery:
                for worker in range(4):
                    nursery.start_soon(stream, client, worker)
                await trio.sleep(2)
                rss_before = process.memory_info().rss

                await trio.to_thread.run_sync(private_kafka.down)
                phase = "outage"
                with trio.fail_after(20):
                    while await breaker_state(client) not in (1.0, 2.0):  # open or half-open
                        await trio.sleep(0.1)
                ready = await client.get("/ready")
                assert ready.status_code == 503 and "circuit breaker" in ready.text
                assert (await client.get("/health")).status_code == 200
                rss_during = []
                for _ in range(10):
                    await trio.sleep(0.5)
                    rss_during.append(process.memory_info().rss)

                await trio.to_thread.run_sync(private_kafka.up)
                phase = "after"
                recovered_at = len([a for a in answers if a[0] == "after" and a[1] == 202])
                with trio.fail_after(60):
                    while len([a for a in answers if a[0] == "after" and a[1] == 202]) < recovered_at + 200:
                        await trio.sleep(0.1)
                stop.set()
            assert await breaker_state(client) == 0.0
        assert await gateway.stop() == 0
    finally:
        await gateway.close()

    outage = [a for a in answers if a[0] == "outage"]
    assert any(status == 503 for _, status, _ in outage), "the breaker answered 503 during the outage"
    seconds = sorted(seconds for _, _, seconds in answers)
    assert percentile(seconds, 0.99) < 0.5, "the breaker answers at once; so does the buffer"
    assert seconds[-1] < 3.0, "no request waited for the broker (the client gives up at 5 s)"
    assert max(rss_during) - rss_before < 64 * 1024 * 1024, "memory stayed flat during the outage"
    expected = set(accepted)
    records = await KafkaReader(private_kafka.bootstrap_servers).read(
        gateway_env["APPLICATION_TOPIC"],
        until=lambda rs: expected <= {r.headers["event-id"].decode() for r in rs},
        timeout=60,
    )
    missing = expected - {r.headers["event-id"].decode() for r in records}
    assert not missing, f"{len(missing)} of {len(expected)} accepted events are not in Kafka"
