"""PromQL checks shared by the Prometheus and Grafana tests.

An expression is valid when Prometheus's own parser takes it (``promtool check rules`` on a rules file
that records it), and it is right only when every metric it selects is one the gateway exports: a
misspelt or renamed metric parses fine and then shows an empty panel or an alert that never fires.
The names are read from the app's registry, so they follow app/observability/metrics.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import promql_parser
import yaml

from app.observability.metrics import Metrics

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
TOOL_TIMEOUT = 60

# Series that Prometheus writes itself for every target.
SCRAPE_SERIES = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
     "scrape_series_added"}
)
# The series names each metric type is exposed as in the text format (prometheus_client).
TYPE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_series_names() -> frozenset[str]:
    """Every series name a gateway's /metrics can show, labelled metrics without samples yet included."""
    names = set(SCRAPE_SERIES)
    for family in Metrics().registry.collect():
        if family.samples:
            names.update(sample.name for sample in family.samples)
        else:  # labelled, no child yet: the names its first child will have
            names.update(family.name + suffix for suffix in TYPE_SUFFIXES[family.type])
    return frozenset(names)


def selected_metrics(expr: str) -> set[str]:
    """The metric names an expression selects; a selector without a literal name is refused."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                raise ValueError(f"selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def unknown_metrics(exprs: Iterable[str], exported: frozenset[str] | None = None) -> dict[str, set[str]]:
    """Each expression that selects a metric the app does not export, with those names."""
    known = exported_series_names() if exported is None else exported
    found = {expr: selected_metrics(expr) - known for expr in exprs}
    return {expr: names for expr, names in found.items() if names}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def check_expressions(exprs: Iterable[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on a rules file recording each expression."""
    rules = [{"record": f"expression_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = directory / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}, sort_keys=False))
    return promtool("check", "rules", path)


GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
# Grafana's interval variables, as a duration Prometheus accepts.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}


def substitute_grafana_variables(expr: str, variables: Mapping[str, str]) -> str:
    """The expression as Prometheus would get it: interval variables as durations, the others by ``variables``."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        if name in variables:
            return variables[name]
        raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")

    return GRAFANA_VARIABLE.sub(value, expr)
