"""The infrastructure shipper on 8082: the host collector and agents' metrics, proven by reading Kafka back."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import psutil
import pytest
import trio

from app.config import Settings
from app.observability.metrics import Metrics
from app.runtime import Runtime, run
from app.shippers.collector import Collector, Reading, default_sensors
from tests.conftest import wait_ready
from tests.kafka_reader import ConsumedRecord, KafkaReader

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def collecting_gateway(settings: Settings) -> AsyncIterator[Runtime]:
    """A gateway whose collector samples every 0.5 s under a host name of this test's own."""
    collecting = dataclasses.replace(settings, collector_interval=0.5, metrics_host=f"host-{os.getpid()}-{time.time_ns()}")
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, collecting, handle_signals=False))
        await wait_ready(runtime.url("infrastructure"))
        yield runtime
        runtime.shutdown()


def samples(records: list[ConsumedRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


@pytest.mark.integration
async def test_the_collector_ships_every_sensor_keyed_by_host(collecting_gateway: Runtime, kafka: KafkaReader) -> None:
    host = collecting_gateway.settings.metrics_host
    wanted = {
        "system.cpu.utilization", "system.load_average", "system.memory.used", "system.memory.available",
        "system.swap.used", "system.disk.used", "system.network.bytes_sent", "system.processes",
        "process.cpu.utilization", "process.memory.rss",
    }
    if psutil.disk_io_counters(perdisk=True):
        wanted.add("system.disk.read_bytes")

    def rounds(records: list[ConsumedRecord]) -> int:
        return sum(1 for s in samples(records) if s["metric"] == "system.processes")

    records = await kafka.read(collecting_gateway.settings.infrastructure.topic, until=lambda r: rounds(r) >= 3)
    assert rounds(records) >= 3, "three rounds of samples"
    assert {r.key for r in records} == {host.encode()}
    shipped = samples(records)
    assert wanted <= {s["metric"] for s in shipped}
    for sample in shipped:
        assert set(sample) == {"eventId", "receivedAt", "host", "metric", "value", "unit", "labels", "timestamp"}
        assert sample["host"] == host
    assert len({r.headers["event-id"] for r in records}) == len(records)

    by_metric = {(s["metric"], json.dumps(s["labels"], sort_keys=True)): s for s in shipped}
    rss = by_metric["process.memory.rss", json.dumps({"pid": str(os.getpid())})]
    assert rss["unit"] == "bytes" and 10e6 < float(rss["value"]) < 4e9, "this very process's RSS"
    root = by_metric["system.disk.used", json.dumps(
        next(s["labels"] for s in shipped if s["metric"] == "system.disk.used" and s["labels"]["mount"] == "/"),
        sort_keys=True,
    )]
    assert float(root["value"]) == pytest.approx(psutil.disk_usage("/").used, rel=0.05)
    cpu_total = [s for s in shipped if s["metric"] == "system.cpu.utilization" and s["labels"] == {"cpu": "total"}]
    assert cpu_total and all(0 <= float(s["value"]) <= 100 for s in cpu_total)
    per_cpu = {s["labels"]["cpu"] for s in shipped if s["metric"] == "system.cpu.utilization"} - {"total"}
    cpus = psutil.cpu_count()
    assert cpus is not None, "psutil counts this machine's CPUs"
    assert per_cpu == {str(n) for n in range(cpus)}


async def test_failing_and_slow_sensors_are_skipped_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"slow": 0}

    def broken() -> list[Reading]:
        raise PermissionError("/proc/diskstats")

    def slow() -> list[Reading]:
        calls["slow"] += 1
        time.sleep(1.0)
        return [Reading("slow", 1.0, "1")]

    def fine() -> list[Reading]:
        return [Reading("fine", 1.0, "1")]

    metrics = Metrics()
    collector = Collector(
        None,  # type: ignore[arg-type]  # sample() ships nothing
        metrics,
        interval=0.3,  # the time a sensor has: ample for `fine` on a busy machine
        sensors={"broken": broken, "slow": slow, "fine": fine},
    )
    with caplog.at_level(logging.WARNING, logger="app.shippers.collector"):
        first = await collector.sample()
        second = await collector.sample()  # the slow sensor's thread is still running: skipped
    assert [r.metric for r in first] == ["fine"]
    assert [r.metric for r in second] == ["fine"]
    assert calls["slow"] == 1, "a sensor still busy is not called again"
    await trio.sleep(1.2)
    third = await collector.sample()
    assert calls["slow"] == 2, "once its thread returns, the sensor runs again"
    assert [r.metric for r in third] == ["fine"]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "host sensor broken failed: PermissionError('/proc/diskstats')" in messages
    assert "host sensor slow took longer than 0.3 s" in messages
    assert metrics.collector_sensor_failures.labels("broken")._value.get() == 3
    assert metrics.collector_sensor_failures.labels("slow")._value.get() == 2


async def test_every_default_sensor_reads_this_host() -> None:
    for name, sensor in default_sensors().items():
        readings = await trio.to_thread.run_sync(sensor)
        if name == "disk_io" and not psutil.disk_io_counters(perdisk=True):
            continue
        assert readings, name
        for reading in readings:
            assert isinstance(reading.value, (int, float)) and reading.unit and reading.metric, (name, reading)


@pytest.mark.integration
@pytest.mark.parametrize("listener", ["infrastructure", "gateway"])
async def test_agents_post_single_batch_and_ndjson_samples(gateway: Runtime, kafka: KafkaReader, listener: str) -> None:
    one = {"host": "web-1", "metric": "system.cpu.utilization", "value": 42.5, "unit": "percent", "labels": {"cpu": "0"},
           "timestamp": "2026-11-25T10:00:00Z"}
    batch = [{"host": f"web-{n}", "metric": "system.memory.used", "value": n * 1e9, "unit": "bytes"} for n in range(2, 5)]
    async with httpx.AsyncClient(base_url=gateway.url(listener)) as client:
        single = await client.post("/api/v1/metrics", json=one, headers={"traceparent": TRACEPARENT})
        batched = await client.post("/api/v1/metrics/batch", json={"metrics": batch})
        ndjson = await client.post(
            "/api/v1/metrics/batch",
            content="\n".join(json.dumps(s) for s in batch[:2]).encode(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        invalid = await client.post("/api/v1/metrics/batch", json={"metrics": [one, {**one, "value": "high"}]})
    assert single.status_code == 202, single.text
    assert single.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert batched.status_code == 202 and batched.json()["count"] == 3
    assert ndjson.status_code == 202 and ndjson.json()["count"] == 2
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["index"] == 1

    ids = {single.json()["eventId"], *batched.json()["eventIds"], *ndjson.json()["eventIds"]}
    records = await kafka.read(gateway.settings.infrastructure.topic, count=6, settle=1.0)
    assert {r.headers["event-id"].decode() for r in records} == ids, "the 422 batch left nothing behind"
    by_id = {r.headers["event-id"].decode(): r for r in records}
    first = by_id[single.json()["eventId"]]
    assert first.key == b"web-1"
    assert first.headers["traceparent"].decode().split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    value = json.loads(first.value)
    assert value == {**one, "eventId": single.json()["eventId"], "receivedAt": value["receivedAt"]}
    assert [json.loads(by_id[i].value)["unit"] for i in batched.json()["eventIds"]] == ["bytes"] * 3


@pytest.mark.integration
async def test_metrics_rate_emits_the_configured_events_per_second(settings: Settings, kafka: KafkaReader) -> None:
    rate = 400.0
    loaded = dataclasses.replace(settings, collector_interval=1.0, metrics_rate=rate, metrics_host="load-test")
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        runtime: Runtime = await nursery.start(partial(run, loaded, handle_signals=False))
        await wait_ready(runtime.url("infrastructure"))
        emitting = trio.current_time()
        await trio.sleep(3.0)
        runtime.shutdown()
    stopped = trio.current_time()
    records = await kafka.read(settings.infrastructure.topic, count=int(rate * 2), settle=2.0)
    assert len(records) >= rate * (stopped - emitting) * 0.7, "close to the rate while it ran"
    assert len(records) <= rate * (stopped - started) * 1.05, "never above the rate"
    assert {r.key for r in records} == {b"load-test"}
