#!/usr/bin/env python3
"""Latency under overload: p99 of accepted requests at half and at twice the rate limit.

Starts the gateway as a separate process with APPLICATION_RATE_LIMIT set, drives single logs
open-loop (fixed schedule, latency from the scheduled time) with the lean client of
scripts/httpload.py, and prints one table. The target: at twice the limit, the p99 of the
accepted requests stays within 2x of its value at half the limit.

    .venv/bin/python scripts/bench_overload.py [--limit 100] [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_support import gateway, percentile  # noqa: E402
from scripts.httpload import Answer, open_loop, request_bytes  # noqa: E402


async def measure(port: int, rate: float, seconds: float) -> list[Answer]:
    body = json.dumps({"source": "load", "level": "INFO", "message": "m"}).encode()
    return await open_loop("127.0.0.1", port, request_bytes(f"127.0.0.1:{port}", "/api/v1/logs", body), rate, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=100.0, help="APPLICATION_RATE_LIMIT, events/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with gateway("application", "--no-postgres", APPLICATION_RATE_LIMIT=str(args.limit), MAX_BATCH_EVENTS="10") as ports:
        port = ports["application"]
        trio.run(measure, port, args.limit / 2, 2.0)  # warm-up
        print(f"{'run':>4}{'offered/s':>11}{'202/s':>8}{'429/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'p99 ratio':>11}", flush=True)
        for run in range(1, args.runs + 1):
            rows = []
            for rate in (args.limit / 2, 2 * args.limit):
                answers = trio.run(measure, port, rate, args.seconds)
                accepted = [1000 * a.latency for a in answers if a.status == 202]  # ms
                rows.append((rate, accepted, sum(a.status == 429 for a in answers)))
                trio.run(trio.sleep, 2.0)  # the bucket refills
            base = percentile(rows[0][1], 0.99)
            for rate, accepted, refused in rows:
                p99 = percentile(accepted, 0.99)
                print(
                    f"{run:>4}{rate:>11.0f}{len(accepted) / args.seconds:>8.0f}{refused / args.seconds:>8.0f}"
                    f"{percentile(accepted, 0.5):>9.1f}{p99:>9.1f}{p99 / base:>11.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
