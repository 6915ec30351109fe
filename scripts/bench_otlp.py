#!/usr/bin/env python3
"""Throughput of OTLP/HTTP logs against the JSON batch route, in one gateway process.

Starts ``python -m app --role application`` against the local Kafka (rate limits off), then
drives the application listener with ``hey`` (closed loop, ``--connections`` connections,
``--seconds`` each, after a short warm-up) with a body file of ``--records`` events:

- ``POST /v1/logs``, an OTLP ``ExportLogsServiceRequest`` in binary protobuf, the way an SDK's
  batch processor sends it (resource, scope, severity, attributes, trace and span ids);
- ``POST /api/v1/logs/batch``, the same events as this gateway's JSON batch.

Prints events/s (events of accepted answers only), requests/s and p99 of each.

    .venv/bin/python scripts/bench_otlp.py [--seconds 10] [--records 500] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_support import gateway, hey, require_hey  # noqa: E402

WARM_UP = 2.0
NANOS = 1_764_064_800_000_000_000


def attribute(key: str, value: str | int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value))


def otlp_body(records: int) -> bytes:
    logs = [
        LogRecord(
            time_unix_nano=NANOS + n * 1_000_000,
            severity_number=SeverityNumber.SEVERITY_NUMBER_INFO,
            severity_text="INFO",
            body=AnyValue(string_value=f"order {n} processed in {n % 97} ms"),
            attributes=[attribute("order.id", f"o-{n}"), attribute("http.status_code", 200)],
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
            flags=1,
        )
        for n in range(records)
    ]
    resource = Resource(attributes=[attribute("service.name", "checkout"), attribute("host.name", "web-1")])
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource,
                scope_logs=[ScopeLogs(scope=InstrumentationScope(name="checkout.orders", version="1.0"), log_records=logs)],
            )
        ]
    )
    return request.SerializeToString()


def json_body(records: int) -> bytes:
    logs = [
        {
            "source": "checkout",
            "level": "INFO",
            "message": f"order {n} processed in {n % 97} ms",
            "timestamp": "2026-11-25T10:00:00Z",
            "attributes": {"order.id": f"o-{n}", "http.status_code": 200},
            "traceId": os.urandom(16).hex(),
        }
        for n in range(records)
    ]
    return json.dumps({"logs": logs}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    require_hey()
    cases = [
        ("OTLP protobuf  POST /v1/logs", "/v1/logs", otlp_body(args.records), "application/x-protobuf", "200"),
        ("JSON batch     POST /api/v1/logs/batch", "/api/v1/logs/batch", json_body(args.records), "application/json", "202"),
    ]
    rows: list[tuple[str, int, float, float, float, float]] = []
    connections = ["-c", str(args.connections)]
    with tempfile.TemporaryDirectory() as tmp, gateway(
        "application", "--no-postgres", args=["--role", "application"], APPLICATION_RATE_LIMIT="0"
    ) as ports:
        for name, path, body, content_type, accepted in cases:
            body_file = Path(tmp) / path.strip("/").replace("/", "_")
            body_file.write_bytes(body)
            url = f"http://127.0.0.1:{ports['application']}{path}"
            print(f"  {name} ...", file=sys.stderr, flush=True)
            hey(url, str(body_file), WARM_UP, connections, content_type, accepted)
            result = hey(url, str(body_file), args.seconds, connections, content_type, accepted)
            answers = result["ok"] + result["other"]
            events = result["rps"] * args.records * result["ok"] / answers if answers else 0.0
            rows.append((name, len(body), result["rps"], events, result["p99"], result["other"]))
    print(f"{'route':40} {'body bytes':>10} {'requests/s':>11} {'events/s':>10} {'p99 ms':>8} {'refused':>8}")
    for name, size, rps, events, p99, refused in rows:
        print(f"{name:40} {size:>10} {rps:>11.1f} {events:>10.0f} {p99:>8.1f} {refused:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
