"""The Grafana provisioning and dashboards under ops/grafana, checked without a Grafana.

Every query must be PromQL that Prometheus parses and may select only metrics the gateway exports, and
only the job Prometheus scrapes, so a renamed metric or job breaks this test instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.conftest import ROOT
from tests.ops.promql import (
    check_expressions,
    exported_series_names,
    selected_metrics,
    substitute_grafana_variables,
    unknown_metrics,
)

GRAFANA = ROOT / "ops" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "prometheus"
# Where ops/compose.yaml mounts ops/grafana/dashboards, and so where the provider must read.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards"
# What the gateway dashboard has to show (one panel or more each).
REQUIRED_METRICS = {
    "kafka_producer_success_total",
    "kafka_producer_error_total",
    "kafka_producer_send_duration_seconds_bucket",
    "http_request_duration_seconds_bucket",
    "producer_throttled_total",
    "events_per_request_bucket",
    "producer_buffer_fill_ratio",
    "producer_circuit_breaker_state",
    "outbox_pending_events",
    "outbox_oldest_pending_age_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "kafka_broker_rtt_seconds",
    "kafka_client_queue_messages",
    "kafka_client_retries_total",
    "gateway_ready",
    "kafka_consumergroup_lag",
    "kafka_consumergroup_lag_seconds",
}
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?, *\w+\)$")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def template_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each dashboard variable with a value that stands for any choice of it in a label matcher."""
    return {variable["name"]: ".*" for variable in dashboard.get("templating", {}).get("list", [])}


def queries(dashboard: dict[str, Any]) -> list[str]:
    """The panels' PromQL as Prometheus receives it."""
    variables = template_variables(dashboard)
    return [
        substitute_grafana_variables(target["expr"], variables)
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_metrics(dashboard: dict[str, Any]) -> set[str]:
    """The metrics the query variables take their values from (``label_values(metric, label)``)."""
    names = set()
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"variable {variable['name']}: only label_values(metric, label) is checked here: {query!r}"
        names.add(match["metric"])
    return names


def scraped_jobs() -> set[str]:
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def job_matchers(expr: str) -> list[tuple[promql_parser.MatchOp, str]]:
    """The ``job`` label matchers of an expression's selectors."""
    found: list[tuple[promql_parser.MatchOp, str]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):  # a range's selector is visited too
            found.extend((m.op, m.value) for m in node.matchers.matchers if m.name == "job")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def unscraped_jobs(exprs: list[str], jobs: set[str]) -> set[str]:
    """The ``job`` values (or patterns) the expressions select that match none of ``jobs``."""
    wrong = set()
    for expr in exprs:
        for op, value in job_matchers(expr):
            if op == promql_parser.MatchOp.Equal and value not in jobs:
                wrong.add(value)
            if op == promql_parser.MatchOp.Re and not any(re.fullmatch(value, job) for job in jobs):
                wrong.add(value)
    return wrong


def test_queries_select_the_job_prometheus_scrapes() -> None:
    """A panel on job="..." stays empty unless Prometheus scrapes a job of that name (metric names cannot tell)."""
    exprs = [expr for path in DASHBOARDS for expr in queries(load(path))]
    assert any(job_matchers(expr) for expr in exprs), "the gateway dashboard filters on the job"
    assert unscraped_jobs(exprs, scraped_jobs()) == set()
    assert unscraped_jobs(['up{job="gateway"}', 'up{job=~"kafka-.*"}', 'up{job!="x"}'], {"kafka-log-gateway"}) == {
        "gateway"
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_query_parses(path: Path, tmp_path: Path) -> None:
    exprs = queries(load(path))
    assert exprs
    result = check_expressions(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_query_selects_exported_metrics(path: Path) -> None:
    dashboard = load(path)
    assert unknown_metrics(queries(dashboard)) == {}
    assert variable_metrics(dashboard) - exported_series_names() == set()


def test_the_gateway_dashboard_shows_what_operators_need() -> None:
    used = set().union(*map(selected_metrics, queries(load(GRAFANA / "dashboards" / "gateway.json"))))
    assert REQUIRED_METRICS - used == set()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_rates_follow_the_scrape_interval(path: Path) -> None:
    """Ranges are $__rate_interval, which Grafana keeps at four scrape intervals or more."""
    for panel in panels(load(path)):
        for target in panel.get("targets", []):
            ranges = re.findall(r"\[([^\]]*)\]", target["expr"])
            assert set(ranges) <= {"$__rate_interval"}, (panel["title"], target["expr"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_panels_use_the_provisioned_datasource(path: Path) -> None:
    dashboard = load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        for node in [panel, *panel["targets"]]:
            assert node["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_layout(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] and dashboard["title"]
    all_panels = panels(dashboard)
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in all_panels:
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24, panel["title"]
        boxes.append((panel["title"], box))
    for (title_a, a), (title_b, b) in combinations(boxes, 2):
        side_by_side = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
        one_above_the_other = a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
        assert side_by_side or one_above_the_other, (title_a, title_b)


def test_datasource_provisioning() -> None:
    document = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = document["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    scrape_interval = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())["global"][
        "scrape_interval"
    ]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_dashboard_provider_reads_the_mounted_directory() -> None:
    document = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_PATH


def test_the_checks_catch_mistakes(tmp_path: Path) -> None:
    """A misspelt metric, a histogram without its _bucket, a counter without _total and bad syntax are caught."""
    exprs = [
        'sum by (service) (rate(kafka_producer_sucess_total{service=~".*"}[1m]))',
        "histogram_quantile(0.99, sum by (le) (rate(kafka_producer_send_duration_seconds[1m])))",
        "rate(producer_throttled[1m])",
        "max(producer_buffer_fill_ratio)",
    ]
    assert unknown_metrics(exprs) == {
        exprs[0]: {"kafka_producer_sucess_total"},
        exprs[1]: {"kafka_producer_send_duration_seconds"},
        exprs[2]: {"producer_throttled"},
    }
    with pytest.raises(ValueError, match="without a metric name"):
        selected_metrics('{__name__=~"kafka_.*"}')
    assert check_expressions(exprs, tmp_path).returncode == 0
    broken = check_expressions(["sum by (service) (rate(kafka_producer_success_total[1m])"], tmp_path)
    assert broken.returncode != 0
    assert "expression_0" in broken.stdout + broken.stderr
    with pytest.raises(KeyError, match=r"\$instance"):
        substitute_grafana_variables('up{instance="$instance"}', {"service": ".*"})
    assert substitute_grafana_variables(
        'rate(x{service=~"${service}"}[$__rate_interval])', {"service": ".*"}
    ) == 'rate(x{service=~".*"}[1m])'
