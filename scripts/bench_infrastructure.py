#!/usr/bin/env python3
"""The infrastructure shipper at the reference design's 3,000 events/s.

Starts the gateway as a separate process against the local Kafka (rate limits off) and prints
one table:

- the host collector emitting 3,000 events/s (``--metrics-rate 3000``): events Kafka
  acknowledged per second, and the p99 from hand-over to acknowledgement (the
  ``kafka_producer_send_duration_seconds`` histogram, read before and after);
- agents posting 3,000 events/s to ``/api/v1/metrics/batch`` (100 per request, and 10 per
  request) and single samples to ``/api/v1/metrics``, at a fixed rate with ``hey``: HTTP p50 and
  p99.

    .venv/bin/python scripts/bench_infrastructure.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_support import gateway, hey, require_hey  # noqa: E402



class Unlimited(TypedDict):
    """Settings passed as ``**UNLIMITED``: their keys typed apart, so none can stand for ``gateway``'s ``root``."""

    INFRASTRUCTURE_RATE_LIMIT: str
    APPLICATION_RATE_LIMIT: str


UNLIMITED: Unlimited = {"INFRASTRUCTURE_RATE_LIMIT": "0", "APPLICATION_RATE_LIMIT": "0"}
SAMPLE = {"host": "web-1", "metric": "system.cpu.utilization", "value": 42.5, "unit": "percent", "labels": {"cpu": "0"}}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def delivered(text: str) -> float:
    match = re.search(r'^kafka_producer_success_total\{service="infrastructure",[^}]*\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def buckets(text: str) -> dict[float, float]:
    pattern = r'^kafka_producer_send_duration_seconds_bucket\{le="([^"]+)",service="infrastructure",[^}]*\} (\S+)$'
    return {float(le): float(count) for le, count in re.findall(pattern, text, re.MULTILINE)}


def p99_upper_bound(before: dict[float, float], after: dict[float, float]) -> float:
    """The histogram bucket (upper bound, ms) holding the 99th percentile of what happened in between."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts[float("inf")]
    for le, cumulative in counts.items():
        if total and cumulative >= 0.99 * total:
            return le * 1000
    return float("nan")


def collector_run(seconds: float) -> tuple[float, float]:
    with gateway("infrastructure", "--no-postgres", args=["--role", "infrastructure", "--metrics-rate", "3000"], **UNLIMITED) as ports:
        port = ports["infrastructure"]
        time.sleep(3)  # warm-up
        first = scrape(port)
        time.sleep(seconds)
        last = scrape(port)
    return (delivered(last) - delivered(first)) / seconds, p99_upper_bound(buckets(first), buckets(last))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    require_hey()
    rows: list[tuple[str, float, float, float, float, float]] = []
    rate, send_p99 = collector_run(args.seconds)
    rows.append(("collector, --metrics-rate 3000", rate, float("nan"), float("nan"), send_p99, 0))
    with tempfile.TemporaryDirectory() as tmp, gateway(
        "infrastructure", "--no-postgres", args=["--role", "infrastructure"], COLLECTOR_INTERVAL="0", **UNLIMITED
    ) as ports:
        port = ports["infrastructure"]
        runs = [
            ("agents, batch of 100, 30 req/s", "/api/v1/metrics/batch", {"metrics": [SAMPLE] * 100}, 100, ["-c", "1", "-q", "30"]),
            ("agents, batch of 10, 300 req/s", "/api/v1/metrics/batch", {"metrics": [SAMPLE] * 10}, 10, ["-c", "10", "-q", "30"]),
            ("agents, single, 500 req/s", "/api/v1/metrics", SAMPLE, 1, ["-c", "10", "-q", "50"]),
        ]
        for name, path, body, per_request, extra in runs:
            body_file = Path(tmp, "body.json")
            body_file.write_text(json.dumps(body))
            url = f"http://127.0.0.1:{port}{path}"
            hey(url, str(body_file), 2.0, extra)  # warm-up
            before = buckets(scrape(port))
            result = hey(url, str(body_file), args.seconds, extra)
            send_p99 = p99_upper_bound(before, buckets(scrape(port)))
            rows.append((name, result["rps"] * per_request, result["p50"], result["p99"], send_p99, result["other"]))
    print(f"{'run':<34}{'events/s':>10}{'HTTP p50 ms':>13}{'HTTP p99 ms':>13}{'Kafka p99 ms <=':>17}{'non-202':>9}")
    for name, events, p50, p99, kafka_p99, other in rows:
        print(f"{name:<34}{events:>10.0f}{p50:>13.1f}{p99:>13.1f}{kafka_p99:>17.1f}{other:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
