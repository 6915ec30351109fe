"""Prometheus itself (Debian's ``prometheus``, in agent mode) remote-writing to the gateway.

The agent scrapes itself and a ``prometheus-node-exporter`` every second; then its scrape
configs are taken away (a reload), which ends the scraping with a staleness marker per series,
and the test waits until the agent's queue is drained and its counters stand still. What the
agent sent once and had answered 2xx is ``samples_total - samples_retried_total -
samples_failed_total`` (Prometheus counts every attempt in ``samples_total``); each of those is
an event in Kafka or a skipped NaN counted by the gateway, exactly, and no event is there twice.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import ROOT, wait_ready
from tests.kafka_reader import KafkaReader
from tests.processes import free_port

pytestmark = pytest.mark.integration

SENT = "prometheus_remote_storage_samples_total"
RETRIED = "prometheus_remote_storage_samples_retried_total"
FAILED = "prometheus_remote_storage_samples_failed_total"
PENDING = "prometheus_remote_storage_samples_pending"


def remote_write(url: str) -> list[dict[str, Any]]:
    """The remote_write section docs/agents.md shows, aimed at ``url``, with a queue that sends at once."""
    return [
        {
            "url": url,
            "queue_config": {
                "batch_send_deadline": "100ms",
                "max_samples_per_send": 500,
                "min_shards": 1,
                "max_shards": 1,  # no resharding: a reshard cancels sends under way and spoils the counts
                "min_backoff": "100ms",
                "max_backoff": "2s",
                "retry_on_http_429": True,
            },
        }
    ]


def agent_config(url: str, jobs: dict[str, Path]) -> dict[str, Any]:
    """Scrape each job's targets from a file of its own (emptied to end the scraping), every second."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": job, "file_sd_configs": [{"files": [str(path)]}]} for job, path in jobs.items()
        ],
        "remote_write": remote_write(url),
    }


def agents_section(title: str) -> str:
    text = (ROOT / "docs" / "agents.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n#", start + 1)]


def test_the_agents_page_shows_the_remote_write_configuration_the_agent_runs_with() -> None:
    section = agents_section("Prometheus (agent mode or server) remote_write")
    shown = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert shown == {"remote_write": remote_write("http://gateway:8082/api/v1/write")}


async def samples(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Every sample of a /metrics page, by name (summed over its label sets)."""
    text = (await client.get(f"{url}/metrics")).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


@asynccontextmanager
async def process(args: list[str], log: Path) -> AsyncIterator[trio.Process]:
    with log.open("wb") as output:
        proc = await trio.lowlevel.open_process(args, stdout=output, stderr=output)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def wait_for(check: Callable[[], Any], what: str, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.2)


@asynccontextmanager
async def running_gateway(env: dict[str, str]) -> AsyncIterator[Runtime]:
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        yield runtime
        runtime.shutdown()


async def scrape_then_drain(
    runtime: Runtime, listener: str, tmp_path: Path, scrape_seconds: float, drain_timeout: float
) -> tuple[dict[str, float], dict[str, str]]:
    """Run node exporter and a Prometheus agent writing to ``listener``; the agent's final counters
    (once its queue is drained and nothing moves, the markers counted) and the instance label of each job."""
    node, agent = free_port(), free_port()
    targets = {"node": f"127.0.0.1:{node}", "prometheus": f"127.0.0.1:{agent}"}
    config = tmp_path / "prometheus.yml"
    url = runtime.url(listener) + "/api/v1/write"
    jobs = {job: tmp_path / f"{job}.json" for job in targets}
    for job, target in targets.items():
        jobs[job].write_text(json.dumps([{"targets": [target]}]))
    config.write_text(yaml.safe_dump(agent_config(url, jobs)))
    agent_url = f"http://{targets['prometheus']}"
    async with (
        process(
            ["prometheus-node-exporter", f"--web.listen-address={targets['node']}", "--no-collector.systemd"],
            tmp_path / "node-exporter.log",
        ),
        process(
            [
                "prometheus", "--enable-feature=agent", f"--config.file={config}",
                f"--storage.agent.path={tmp_path / 'wal'}", f"--web.listen-address={targets['prometheus']}",
            ],
            tmp_path / "prometheus.log",
        ),
        httpx.AsyncClient(timeout=5) as client,
    ):
        async def ready() -> bool:
            try:
                return (await client.get(f"{agent_url}/-/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, "the agent is ready", 30)
        await trio.sleep(scrape_seconds)
        # The targets go (file discovery, the jobs stay): each scrape loop stops and writes a
        # staleness marker per series it had. A job taken out of the configuration would not.
        for path in jobs.values():
            emptied = path.with_suffix(".new")
            emptied.write_text("[]")
            emptied.replace(path)  # at once: the agent reads no half-written file
        await wait_for(lambda: _no_targets(client, agent_url), "the agent dropped its targets", 15)
        await trio.sleep(3)  # the markers are written about two intervals after the last scrape
        polls: list[tuple[dict[str, float], float]] = []

        async def drained() -> bool:
            now = await samples(client, agent_url)
            polls.append((now, skipped(runtime)))
            if now.get(PENDING, 1) != 0 or len(polls) < 10 or not polls[-1][1]:
                return False
            # 2 s without a sample sent, or a marker counted: both targets' markers are in (their loops
            # tick apart by at most an interval), the gateway answered every request.
            window = {(counters[SENT], markers) for counters, markers in polls[-10:]}
            return len(window) == 1

        await wait_for(drained, "the agent's queue drained", drain_timeout)
        return polls[-1][0], targets


async def _no_targets(client: httpx.AsyncClient, url: str) -> bool:
    active = (await client.get(f"{url}/api/v1/targets")).json()["data"]["activeTargets"]
    return not active


def skipped(runtime: Runtime) -> float:
    registry = runtime.metrics.registry
    return sum(
        registry.get_sample_value(
            "gateway_ingest_skipped_values_total",
            {"service": "infrastructure", "dialect": "remote_write", "reason": reason},
        ) or 0.0
        for reason in ("stale", "non_finite")
    )


async def events_in_kafka(kafka: KafkaReader, runtime: Runtime, count: int) -> list[dict[str, Any]]:
    topic = runtime.settings.infrastructure.topic
    records = await kafka.read(topic, count=count, settle=3.0, timeout=90)
    return [json.loads(record.value) for record in records]


async def test_every_sample_the_agent_had_taken_is_one_event_in_kafka_or_a_counted_stale_marker(
    gateway: Runtime, kafka: KafkaReader, tmp_path: Path
) -> None:
    with trio.fail_after(120):
        counters, targets = await scrape_then_drain(
            gateway, "infrastructure", tmp_path, scrape_seconds=5, drain_timeout=30
        )
        assert counters[RETRIED] == 0 and counters[FAILED] == 0, counters
        taken = int(counters[SENT] - counters[RETRIED] - counters[FAILED])
        stale = skipped(gateway)
        found = await events_in_kafka(kafka, gateway, int(taken - stale))
    assert len(found) == taken - stale, (taken, stale, len(found))
    keys = {(e["metric"], tuple(sorted(e["labels"].items())), e["timestamp"]) for e in found}
    assert len(keys) == len(found), "a sample twice"
    assert {e["host"] for e in found} == set(targets.values())
    assert {e["labels"]["job"] for e in found} == set(targets)
    assert {e["metric"] for e in found} >= {"up", "node_load1", "prometheus_remote_storage_samples_total"}
    assert all("__name__" not in e["labels"] for e in found)


async def test_a_rate_limited_agent_retries_its_429s_and_kafka_holds_exactly_what_was_answered_204(
    gateway_env: dict[str, str], kafka: KafkaReader, tmp_path: Path
) -> None:
    # Through the gateway's own listener (8080), which serves the infrastructure routes too.
    env = {**gateway_env, "INFRASTRUCTURE_RATE_LIMIT": "400", "MAX_BATCH_EVENTS": "500"}
    with trio.fail_after(150):
        async with running_gateway(env) as runtime:
            counters, _ = await scrape_then_drain(runtime, "gateway", tmp_path, scrape_seconds=5, drain_timeout=60)
            registry = runtime.metrics.registry
            throttled = registry.get_sample_value("producer_throttled_total", {"service": "infrastructure"})
            assert counters[RETRIED] > 0 and throttled, (counters, throttled)
            assert counters[FAILED] == 0, counters
            taken = int(counters[SENT] - counters[RETRIED])
            stale = skipped(runtime)
            found = await events_in_kafka(kafka, runtime, int(taken - stale))
    assert len(found) == taken - stale, (taken, stale, len(found))
    keys = {(e["metric"], tuple(sorted(e["labels"].items())), e["timestamp"]) for e in found}
    assert len(keys) == len(found), "a sample twice"
