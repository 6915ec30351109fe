"""collectd itself (Debian's ``collectd-core``) posting to the gateway with write_http's JSON format.

The same collectd also writes every value list with its csv plugin: collectd hands each value list
to all its write plugins from one queue, so the csv files hold exactly what write_http was given
(a value list left in the queue at shutdown is dropped for both). Each csv value must be one event
in Kafka, and each event one csv value, compared as the csv plugin prints them (``%lf`` for a gauge,
the integer for a derive), the time read from the same text. write_http flushes what it buffered
when collectd stops (SIGTERM).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from app.dialects.collectd import metric_name
from app.runtime import Runtime
from tests.dialects.test_prometheus_agent import agents_section, running_gateway
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration

# The data source types of the plugins' types (/usr/share/collectd/types.db).
DSTYPES = {"load": "gauge", "memory": "gauge", "cpu": "derive"}

Event = tuple[str, str, tuple[tuple[str, str], ...], dt.datetime, str]


def collectd_config(directory: Path, host: str, url: str) -> str:
    """collectd.conf: load, memory and cpu every second, to write_http (docs/agents.md's snippet) and csv."""
    return f"""
Hostname "{host}"
FQDNLookup false
Interval 1
BaseDir "{directory}"
PIDFile "{directory}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"

LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File "{directory}/collectd.log"
</Plugin>
LoadPlugin load
LoadPlugin memory
LoadPlugin cpu
LoadPlugin csv
<Plugin csv>
  DataDir "{directory}/csv"
  StoreRates false
</Plugin>

LoadPlugin write_http
<Plugin write_http>
  <Node "gateway">
    URL "{url}"
    Format "JSON"
    StoreRates false
    LogHttpError true
    Timeout 5000
  </Node>
</Plugin>
"""


def test_the_readme_shows_the_write_http_configuration_collectd_runs_with() -> None:
    block = agents_section("collectd write_http").split("```\n", 1)[1].split("```", 1)[0]
    shown = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    config = collectd_config(Path("/tmp"), "h", "http://gateway:8082/collectd")
    tested = config[config.index("LoadPlugin write_http") :]
    assert shown == [line.strip() for line in tested.splitlines() if line.strip()]


@asynccontextmanager
async def collectd(directory: Path, host: str, url: str) -> AsyncIterator[trio.Process]:
    config = directory / "collectd.conf"
    config.write_text(collectd_config(directory, host, url))
    with (directory / "stdout.log").open("wb") as output:
        proc = await trio.lowlevel.open_process(["collectd", "-f", "-C", str(config)], stdout=output, stderr=output)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_collectd(runtime: Runtime, listener: str, directory: Path, seconds: float) -> str:
    """collectd posting to ``listener`` for ``seconds``, then stopped as a service manager stops it."""
    host = f"collectd-{uuid.uuid4().hex[:8]}"
    async with collectd(directory, host, runtime.url(listener) + "/collectd") as proc:
        await trio.sleep(seconds)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0, (directory / "collectd.log").read_text()[-2000:]
    return host


def csv_values(directory: Path, host: str) -> tuple[collections.Counter[Event], int]:
    """Every value the csv plugin wrote, as the event it should be, and the count of its NaNs."""
    expected: collections.Counter[Event] = collections.Counter()
    nans = 0
    for path in sorted((directory / "csv" / host).glob("*/*")):
        plugin, _, plugin_instance = path.parent.name.partition("-")
        type_, _, type_instance = path.name[: -len("-YYYY-MM-DD")].partition("-")
        dstype = DSTYPES[type_]
        labels = {"plugin": plugin, "type": type_, "dstype": dstype, "interval": "1"}
        if plugin_instance:
            labels["plugin_instance"] = plugin_instance
        if type_instance:
            labels["type_instance"] = type_instance
        header, *lines = path.read_text().splitlines()
        dsnames = header.split(",")[1:]
        for line in lines:
            time, *values = line.split(",")
            timestamp = dt.datetime.fromtimestamp(float(time), dt.timezone.utc)
            for dsname, value in zip(dsnames, values, strict=True):
                if value.lstrip("-") == "nan":
                    nans += 1
                    continue
                metric = metric_name(plugin, type_, dsname, dstype)
                expected[(host, metric, tuple(sorted(labels.items())), timestamp, value)] += 1
    return expected, nans


def as_csv_writes_it(event: dict[str, Any]) -> Event:
    value = event["value"]
    text = "%f" % value if event["labels"]["dstype"] == "gauge" else "%d" % value
    timestamp = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return (event["host"], event["metric"], tuple(sorted(event["labels"].items())), timestamp, text)


async def events_in_kafka(kafka: KafkaReader, runtime: Runtime, count: int) -> collections.Counter[Event]:
    records = await kafka.read(runtime.settings.infrastructure.topic, count=count, settle=3.0, timeout=60)
    return collections.Counter(as_csv_writes_it(json.loads(record.value)) for record in records)


def counted(runtime: Runtime, name: str, **labels: str) -> float:
    labels = {"service": "infrastructure", "dialect": "collectd", **labels}
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_every_value_collectd_wrote_is_one_event_in_kafka(
    gateway: Runtime, kafka: KafkaReader, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        host = await run_collectd(gateway, "infrastructure", tmp_path, seconds=5)
        expected, nans = csv_values(tmp_path, host)
        plugins = {dict(labels)["plugin"] for _, _, labels, _, _ in expected}
        assert plugins >= {"load", "memory", "cpu"}, "every plugin's values were written"
        found = await events_in_kafka(kafka, gateway, sum(expected.values()))
    assert found == expected
    assert counted(gateway, "gateway_ingest_skipped_values_total", reason="nan") == nans
    assert "HTTP Error code" not in (tmp_path / "collectd.log").read_text()


async def test_a_rate_limited_collectd_loses_exactly_the_values_refused_with_429(
    gateway_env: dict[str, str], kafka: KafkaReader, tmp_path: Path
) -> None:
    # write_http does not retry: what is refused is gone, and the gateway counts it as refused.
    # Through the gateway's own listener (8080), which serves the infrastructure routes too.
    env = {**gateway_env, "INFRASTRUCTURE_RATE_LIMIT": "8", "MAX_BATCH_EVENTS": "40"}
    with trio.fail_after(90):
        async with running_gateway(env) as runtime:
            host = await run_collectd(runtime, "gateway", tmp_path, seconds=6)
            expected, nans = csv_values(tmp_path, host)
            refused = counted(runtime, "gateway_ingest_events_total", outcome="refused")
            taken = counted(runtime, "gateway_ingest_events_total", outcome="accepted")
            assert refused > 0 and taken > 0, (refused, taken)
            assert nans == 0  # else the NaNs of refused requests would be counted nowhere
            assert taken + refused == sum(expected.values())
            found = await events_in_kafka(kafka, runtime, int(taken))
    assert sum(found.values()) == taken
    assert not found - expected, "every event in Kafka is a value collectd wrote, once"
    assert "HTTP Error code: 429" in (tmp_path / "collectd.log").read_text()
