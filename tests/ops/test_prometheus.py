"""The Prometheus configuration and alert rules under ops/prometheus.

promtool checks the files and runs the alerts' unit tests; every metric an alert selects must be one the
gateway exports; and a real Prometheus, started with a byte-identical copy of the configuration, scrapes an
in-process gateway and answers the queries the dashboards are built on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from app.config import Settings
from app.runtime import Runtime
from tests.conftest import ROOT
from tests.ops.promql import promtool, unknown_metrics
from tests.processes import free_port

PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
LOCAL_TARGETS = PROMETHEUS_DIR / "targets" / "local.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB = "kafka-log-gateway"
LISTENER_PORTS = {"gateway": 8080, "application": 8081, "infrastructure": 8082, "transaction": 8083}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def active_targets(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as response:
        targets: list[dict[str, Any]] = json.load(response)["data"]["activeTargets"]
        return targets


def test_config_is_valid() -> None:
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid prometheus config file syntax" in result.stdout


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_select_exported_metrics() -> None:
    assert unknown_metrics(rule["expr"] for rule in alert_rules()) == {}


def test_alerts_are_labelled_and_explained() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert silent == names


def test_config_finds_the_compose_services_and_the_local_targets() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["scrape_interval"] == "5s"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    assert {sd["names"][0]: sd["port"] for sd in job["dns_sd_configs"] if sd["type"] == "A"} == LISTENER_PORTS
    assert job["file_sd_configs"] == [{"files": ["targets/*.json"]}]
    # The listeners' default ports, which the compose services and the local run use.
    defaults = Settings()
    assert {name: getattr(defaults, f"{name}_port") for name in LISTENER_PORTS} == LISTENER_PORTS


def test_local_targets_scrape_each_listener_and_count_the_process_once() -> None:
    groups = json.loads(LOCAL_TARGETS.read_text())
    assert [(group["targets"], group["labels"]["listener"]) for group in groups] == [
        ([f"127.0.0.1:{port}"], name) for name, port in LISTENER_PORTS.items()
    ]
    primary = groups[0]["targets"][0]
    assert "shares_registry_with" not in groups[0]["labels"]
    assert all(group["labels"]["shares_registry_with"] == primary for group in groups[1:])


def test_infra_script_runs_prometheus_on_this_config(tmp_path: Path) -> None:
    """``scripts/infra.py up`` starts the local Prometheus on ops/prometheus/prometheus.yml; ``down`` stops it."""
    port = free_port()
    env = {**os.environ, "INFRA_DIR": str(tmp_path / "infra"), "PROMETHEUS_PORT": str(port)}

    def infra(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "infra.py"), *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )

    def prometheus_line() -> str:
        (line,) = [line for line in infra("status").stdout.splitlines() if line.startswith("prometheus:")]
        return line

    try:
        started = infra("up", "--no-kafka", "--no-postgres")
        assert started.returncode == 0, started.stderr
        assert started.stdout == ""
        assert prometheus_line().startswith("prometheus: up pid=")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status/flags", timeout=5) as response:
            flags = json.load(response)["data"]
        assert flags["config.file"] == str(CONFIG)
        assert flags["web.listen-address"] == f"127.0.0.1:{port}"
        local = [f"127.0.0.1:{listener_port}" for listener_port in LISTENER_PORTS.values()]
        deadline = time.monotonic() + 15  # discovered targets reach the scrape manager within 5 s
        while (instances := sorted(t["labels"]["instance"] for t in active_targets(port))) != local:
            assert time.monotonic() < deadline, instances
            time.sleep(0.2)
    finally:
        stopped = infra("down", "--no-kafka", "--no-postgres")
    assert stopped.returncode == 0, stopped.stderr
    assert prometheus_line().startswith("prometheus: down (not expected) pid=-")


# --- a real Prometheus scraping a real gateway -------------------------------------------------------------

RATE_LIMIT = 10  # events per second; with MAX_BATCH_EVENTS=50 the bucket holds 50 events
FIRST_BATCH = 40
SECOND_BATCH = 20


@pytest.fixture
def gateway_env(gateway_env: dict[str, str]) -> dict[str, str]:
    """A small application rate limit, so that a second batch right after the first is throttled."""
    return {**gateway_env, "APPLICATION_RATE_LIMIT": str(RATE_LIMIT), "MAX_BATCH_EVENTS": "50"}


def targets_file(runtime: Runtime) -> list[dict[str, Any]]:
    """local.json's layout for the gateway's own listeners: the gateway listener's samples stand for the process."""
    addresses = {name: urllib.parse.urlsplit(urls[0]).netloc for name, urls in runtime.addresses.items()}
    primary = addresses["gateway"]
    groups = []
    for name, address in addresses.items():
        labels = {"listener": name} if address == primary else {"listener": name, "shares_registry_with": primary}
        groups.append({"targets": [address], "labels": labels})
    return groups


def batch(count: int, tag: str) -> dict[str, Any]:
    return {"logs": [{"source": f"scrape-{tag}", "level": "INFO", "message": f"{tag} {i}"} for i in range(count)]}


class PrometheusAPI:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def query(self, expr: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/query", params={"query": expr})
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    async def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {series["metric"].get(label, ""): float(series["value"][1]) for series in await self.query(expr)}

    async def wait_for(self, expr: str, label: str, expected: dict[str, float], timeout: float) -> None:
        """Until the query answers ``expected`` for those label values (a scrape may still be on its way)."""
        seen: dict[str, float] = {}
        with trio.move_on_after(timeout):
            while True:
                seen = await self.by_label(expr, label)
                if all(seen.get(key) == value for key, value in expected.items()):
                    return
                await trio.sleep(0.5)
        raise AssertionError(f"{expr}: wanted {expected} within {timeout:.0f}s, last answer {seen}")


@pytest.mark.integration
async def test_prometheus_scrapes_the_gateway(gateway: Runtime, settings: Settings, tmp_path: Path) -> None:
    """The shipped configuration, only its targets file written here, against a gateway taking logs."""
    directory = tmp_path / "prometheus"
    (directory / "targets").mkdir(parents=True)
    for source in (CONFIG, ALERTS):
        shutil.copyfile(source, directory / source.name)
    (directory / "targets" / "test.json").write_text(json.dumps(targets_file(gateway)))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = await trio.lowlevel.open_process(
        [
            PROMETHEUS,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        with trio.fail_after(60):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                await scrape_and_query(PrometheusAPI(client), gateway, settings)
    except BaseException:
        print((tmp_path / "prometheus.log").read_text()[-4000:])
        raise
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


async def scrape_and_query(prometheus: PrometheusAPI, gateway: Runtime, settings: Settings) -> None:
    while True:  # ready once the TSDB is open and the rules are loaded
        try:
            if (await prometheus.client.get("/-/ready")).status_code == 200:
                break
        except httpx.TransportError:
            pass
        await trio.sleep(0.2)

    # Every listener is a target and up; only the gateway listener's samples are kept besides `up`.
    await prometheus.wait_for(f'up{{job="{JOB}"}}', "listener", dict.fromkeys(LISTENER_PORTS, 1.0), timeout=15)

    throttled = 0
    async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=10) as client:
        first = await client.post("/api/v1/logs/batch", json=batch(FIRST_BATCH, "first"))
        assert first.status_code == 202, first.text
        refused = await client.post("/api/v1/logs/batch", json=batch(FIRST_BATCH, "refused"))
        assert refused.status_code == 429, refused.text
        throttled += FIRST_BATCH
        await prometheus.wait_for(
            "sum by (service) (kafka_producer_success_total)", "service", {"application": FIRST_BATCH}, timeout=15
        )
        while True:  # the bucket refills at RATE_LIMIT events per second
            second = await client.post("/api/v1/logs/batch", json=batch(SECOND_BATCH, "second"))
            if second.status_code != 429:
                break
            throttled += SECOND_BATCH
            await trio.sleep(0.5)
        assert second.status_code == 202, second.text
    delivered = FIRST_BATCH + SECOND_BATCH
    # Once each: were the process's metrics taken from all four listeners, this would be four times as much.
    await prometheus.wait_for(
        "sum by (service) (kafka_producer_success_total)", "service", {"application": delivered}, timeout=15
    )

    rates = await prometheus.query("rate(kafka_producer_success_total[1m])")
    application = [series for series in rates if series["metric"]["service"] == "application"]
    assert [series["metric"]["topic"] for series in application] == [settings.application.topic]
    assert application[0]["metric"]["listener"] == "gateway"
    assert float(application[0]["value"][1]) > 0

    (p99,) = await prometheus.query(
        "histogram_quantile(0.99, sum by (le) (rate(kafka_producer_send_duration_seconds_bucket[1m])))"
    )
    assert 0 < float(p99["value"][1]) <= 30 and math.isfinite(float(p99["value"][1]))

    # Exported at 0 from the start for every shipper, so that rate() sees the first throttled burst.
    assert await prometheus.by_label("producer_throttled_total", "service") == {
        "application": throttled, "infrastructure": 0, "transaction": 0,
    }
    # The seed's other two queries, as its users type them: throttling shows, and healthy traffic
    # has no error series at all (each appears with its librdkafka error name on the first error).
    throttling = await prometheus.query("rate(producer_throttled_total[1m])")
    assert {series["metric"]["service"] for series in throttling if float(series["value"][1]) > 0} == {"application"}
    assert await prometheus.query("rate(kafka_producer_error_total[1m])") == []

    # The target's `listener` label wins over the gauge's own, which Prometheus keeps as exported_listener.
    await prometheus.wait_for(
        "min by (exported_listener) (gateway_ready)", "exported_listener", dict.fromkeys(LISTENER_PORTS, 1.0),
        timeout=15,
    )
    # Exported at 0 before anything is lost, so that increase() sees the first loss.
    assert await prometheus.by_label("kafka_producer_lost_total", "service") == {"application": 0, "infrastructure": 0}

    rules: list[dict[str, Any]] = []
    while not rules or any(rule["health"] == "unknown" for rule in rules):  # until evaluated once
        await trio.sleep(0.5)
        response = await prometheus.client.get("/api/v1/rules")
        rules = [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in alert_rules())
    assert {rule["type"] for rule in rules} == {"alerting"}
    assert {rule["name"]: rule["health"] for rule in rules} == {rule["name"]: "ok" for rule in rules}
