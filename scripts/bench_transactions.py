#!/usr/bin/env python3
"""End-to-end transaction ingest: HTTP -> group commit in PostgreSQL (fsync on) -> 202.

Starts the gateway as a separate process against the local Kafka and PostgreSQL
(``make infra-up``), drives it with ``hey`` (Debian package ``hey``) so the load generator is
not Python, and prints one table:

- single transactions, closed loop at 64 connections (the ceiling of one process)
- batches of 100, closed loop at 16 connections
- batches of 100 at a fixed offered rate of half the 5,000 transactions/s target, evenly spaced
  (one sender) and in bursts (several senders whose ticks coincide), for p99

    .venv/bin/python scripts/bench_transactions.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_support import gateway, hey, require_hey  # noqa: E402

SINGLE = json.dumps({"userId": "user-1", "type": "PAYMENT", "amount": 99.99, "currency": "USD"})
BATCH = json.dumps(
    {"transactions": [{"userId": f"user-{i}", "type": "PAYMENT", "amount": "99.99", "currency": "USD"} for i in range(100)]}
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    require_hey()
    with gateway("transaction") as ports:
        url = f"http://127.0.0.1:{ports['transaction']}"
        with tempfile.TemporaryDirectory() as tmp:
            single, batch = Path(tmp, "single.json"), Path(tmp, "batch.json")
            single.write_text(SINGLE)
            batch.write_text(BATCH)
            runs = [
                ("single, 64 connections", "/api/v1/transactions", single, 1, ["-c", "64"]),
                ("batch of 100, 16 connections", "/api/v1/transactions/batch", batch, 100, ["-c", "16"]),
                ("batch of 100, 2,500 tx/s, evenly spaced", "/api/v1/transactions/batch", batch, 100, ["-c", "1", "-q", "25"]),
                ("batch of 100, 2,500 tx/s, bursts of 5", "/api/v1/transactions/batch", batch, 100, ["-c", "5", "-q", "5"]),
            ]
            print(f"{'run':<42}{'req/s':>9}{'tx/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'202':>8}{'other':>7}", flush=True)
            for name, path, body, per_request, extra in runs:
                result = hey(f"{url}{path}", str(body), args.seconds, extra)
                print(
                    f"{name:<42}{result['rps']:>9.0f}{result['rps'] * per_request:>9.0f}"
                    f"{result['p50']:>9.1f}{result['p99']:>9.1f}{result['ok']:>8.0f}{result['other']:>7.0f}",
                    flush=True,
                )
                time.sleep(3)  # let the relay drain between runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
