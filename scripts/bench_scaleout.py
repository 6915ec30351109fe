#!/usr/bin/env python3
"""Single-event ingest on two cores: one process, ``--workers 2``, and the gateway in front of two shippers.

Each configuration runs as separate processes against the local Kafka, rate limits off, and
is driven by ``hey`` (not Python, so the load generator is not what is measured) with single
``POST /api/v1/logs`` requests at 64 connections. Prints one table; the ratio column is
against the single process of the same run.

    .venv/bin/python scripts/bench_scaleout.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_support import ROOT, free_port, gateway, hey, require_hey, wait_ready  # noqa: E402

LOG = json.dumps({"source": "bench", "level": "INFO", "message": "x" * 60})


class Unlimited(TypedDict):
    """Settings passed as ``**UNLIMITED``: their keys typed apart, so none can stand for ``gateway``'s ``root``."""

    APPLICATION_RATE_LIMIT: str
    COLLECTOR_INTERVAL: str


UNLIMITED: Unlimited = {"APPLICATION_RATE_LIMIT": "0", "COLLECTOR_INTERVAL": "0"}


@contextlib.contextmanager
def shippers_behind_gateway(count: int) -> Iterator[int]:
    """``count`` application-shipper processes and a gateway-only process in front; yields its port."""
    with gateway("application", "--no-postgres", args=["--role", "application"], **UNLIMITED) as first:
        others: list[subprocess.Popen[bytes]] = []
        urls = [f"http://127.0.0.1:{first['application']}"]
        env = dict(os.environ, LOG_LEVEL="WARNING", **UNLIMITED)
        try:
            for _ in range(count - 1):
                port = free_port()
                others.append(subprocess.Popen(
                    [sys.executable, "-m", "app", "--role", "application"], cwd=ROOT,
                    env={**env, "APPLICATION_PORT": str(port)}, stderr=subprocess.DEVNULL,
                ))
                urls.append(f"http://127.0.0.1:{port}")
                wait_ready(urls[-1])
            port = free_port()
            others.append(subprocess.Popen(
                [sys.executable, "-m", "app", "--role", "gateway"], cwd=ROOT,
                env={**env, "GATEWAY_PORT": str(port), "APPLICATION_URLS": ",".join(urls)}, stderr=subprocess.DEVNULL,
            ))
            wait_ready(f"http://127.0.0.1:{port}")
            yield port
        finally:
            for process in others:
                process.terminate()
                process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    require_hey()
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp, "log.json")
        body.write_text(LOG)

        def drive(port: int) -> dict[str, float]:
            url = f"http://127.0.0.1:{port}/api/v1/logs"
            hey(url, str(body), 2.0, ["-c", "64"])  # warm-up
            return hey(url, str(body), args.seconds, ["-c", "64"])

        results: list[tuple[str, dict[str, float]]] = []
        with gateway("application", "--no-postgres", args=["--role", "application"], **UNLIMITED) as ports:
            results.append(("one process, 8081", drive(ports["application"])))
        time.sleep(2)
        with gateway("application", "--no-postgres", args=["--role", "application", "--workers", "2"], **UNLIMITED) as ports:
            time.sleep(2)  # the second copy
            results.append(("--workers 2, 8081", drive(ports["application"])))
        time.sleep(2)
        with gateway("gateway", "--no-postgres", **UNLIMITED) as ports:
            results.append(("one process, through 8080 in-process", drive(ports["gateway"])))
        time.sleep(2)
        with shippers_behind_gateway(2) as port:
            results.append(("gateway process + 2 shipper processes", drive(port)))

    base = results[0][1]["rps"]
    print(f"{'configuration':<42}{'req/s':>9}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>9}{'202':>9}{'other':>7}")
    for name, result in results:
        print(
            f"{name:<42}{result['rps']:>9.0f}{result['rps'] / base:>7.2f}{result['p50']:>9.1f}{result['p99']:>9.1f}"
            f"{result['ok']:>9.0f}{result['other']:>7.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
