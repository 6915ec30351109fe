#!/usr/bin/env python3
"""Ceilings, the gateway and the Strimzi Kafka Bridge, measured in one run against the local Kafka.

Every step is bounded (``--seconds`` each, after a short warm-up) and runs with the rate limits
off. HTTP load comes from ``hey`` (not Python, so the load generator is not what is measured):
single events at 64 connections, batches at 16. Events are log JSON of about 100 bytes.

1. ceilings: a raw confluent-kafka produce loop with the application profile's librdkafka
   configuration producing the very records the gateway writes for the events (value with event
   id and times, key, the event-id/traceparent/x-request-id headers; events acknowledged per
   second), the same loop with the events' JSON alone and no headers for reference, and a bare
   ASGI callable on hypercorn-trio that parses the body with msgspec and answers 202 (requests
   per second);
2. the gateway, ``python -m app`` as its own process: single events on 8081 and through 8080,
   log batches of 100 and 500, transaction and metrics batches of 100, and ``--workers 2``;
3. the Strimzi Kafka Bridge 0.33.1 (Java, ``-Xmx512m``, the same producer settings): one record
   and 500 records per request. Its jars are taken from ``--bridge-lib`` (fetched with
   ``ops/kafka-bridge/pom.xml`` when empty; Maven Central does not serve the bridge, so the README
   says how to build them); without them its rows say why they are missing;
4. the bytes the broker stored for the same events with lz4 and without compression, and the
   gateway's peak RSS per configuration (the largest process, sampled during the run).

Prints one table, then a PASS/FAIL line per target. Bench topics (and the database schema of
the transaction run) are deleted at the end.

    .venv/bin/python scripts/bench.py [--seconds 10] [--no-bridge]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import hypercorn.trio
import msgspec
import psutil
import psycopg
import trio
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import load_settings  # noqa: E402
from app.events import decode_log  # noqa: E402
from app.observability.tracing import request_context  # noqa: E402
from app.runtime import hypercorn_config, profile_producer_config  # noqa: E402
from app.streams import log_records  # noqa: E402
from scripts.bench_otlp import otlp_body  # noqa: E402
from scripts.bench_support import ROOT, free_port, gateway_process, hey, infra_up, require_hey  # noqa: E402
from scripts.httpload import open_loop, request_bytes  # noqa: E402

BRIDGE_VERSION = "0.33.1"
BRIDGE_POM = ROOT / "ops" / "kafka-bridge" / "pom.xml"
BRIDGE_LIB = ROOT / ".local" / "kafka-bridge" / "lib"
BRIDGE_TYPE = "application/vnd.kafka.json.v2+json"
KAFKA_LIB = ROOT / ".local" / "kafka" / "lib"
UNLIMITED = {
    "APPLICATION_RATE_LIMIT": "0",
    "INFRASTRUCTURE_RATE_LIMIT": "0",
    "TRANSACTION_RATE_LIMIT": "0",
    "COLLECTOR_INTERVAL": "0",
}
SINGLE_CONNECTIONS = ["-c", "64"]
BATCH_CONNECTIONS = ["-c", "16"]
WARM_UP = 3.0
OPEN_LOOP_SETTLE = 5.0
# ... and then until all CPUs together are busy at most this much, for at most SETTLE_AT_MOST s.
QUIET_CPU_PERCENT = 15.0
SETTLE_AT_MOST = 30.0
# Single events against bare hypercorn: this many rounds of one run each, in turn.
PAIRED_ROUNDS = 3
# The rows of the gateway process, in the table's order (measured in another, see gateway_rows).
GATEWAY_ROWS = (
    "single", "single_half", "bare_half", "tx1", "tx1_half", "single8080", "batch100", "batch500", "otlp500", "tx100",
    "metrics100",
)
# Open-loop rows: this many measured runs; the row is the median one by p99.
OPEN_LOOP_RUNS = 3
# The JVM compiles its hot paths during the first seconds of load.
BRIDGE_WARM_UP = 10.0
COMPRESSION_EVENTS = 200_000
WORKERS_CLEARLY_MORE = 1.25
LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG")
PATHS = ("orders", "users", "carts", "payments", "search")


def log_event(rng: random.Random, i: int) -> dict[str, Any]:
    """About 100 bytes of log JSON that varies like real lines do (so compression is not flattered)."""
    return {
        "source": f"app-{i % 7}",
        "level": rng.choice(LEVELS),
        "message": f"GET /api/{rng.choice(PATHS)}/{rng.randrange(10**6)} {rng.choice((200, 200, 404, 500))} "
        f"{rng.randrange(1, 900)}ms req={rng.getrandbits(32):08x} user={rng.randrange(10**5)}",
    }


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- the bare ASGI ceiling ---------------------------------------------------------------------


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    """Read the body, parse it, answer 202: what any JSON ingest endpoint on hypercorn-trio must do."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].replace("lifespan.", "")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        msgspec.json.decode(body)
        status, payload = 202, b'{"status":"accepted"}'
    except msgspec.DecodeError:
        status, payload = 400, b'{"error":"invalid JSON"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def serve_bare(port: int) -> None:
    # hypercorn configured as the gateway's listeners are (keep-alive timeout, backlog, headers).
    config = hypercorn_config(load_settings({}), port)
    trio.run(hypercorn.trio.serve, bare_app, config)


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port)], cwd=ROOT)
    try:
        wait_port(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_port(port: int, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server for port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    per_request: int = 1
    rps: float = math.nan
    events: float = math.nan
    p99: float = math.nan
    errors: float = math.nan
    rss_mb: float = math.nan
    ratio: float = math.nan
    against: str = ""
    note: str = ""


@dataclass
class RssSampler:
    """The peak RSS of the largest process in a tree, sampled every 100 ms while it runs."""

    pid: int
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, process.memory_info().rss)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.peak = 0
        self._stop.clear()
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=5)
            self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()


def rejected_events(metrics_url: str) -> dict[str, float]:
    """The gateway's ``producer_rejected_total`` (events refused with 503) by service and reason."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"producer_rejected_total\{([^}]*)\} (\S+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
            found[f"{labels.get('service')} {labels.get('reason')}"] = float(match[2])
    return found


def drive(
    name: str, url: str, body: Path, per_request: int, connections: list[str], seconds: float,
    sampler: RssSampler | None = None, content_type: str = "application/json", accepted: str = "202",
    warm_up: float = WARM_UP, metrics_url: str = "",
) -> Row:
    """A warm-up, then one measured ``hey`` run; events/s counts only the events of accepted answers.

    With ``metrics_url`` (a gateway's /metrics) the note says why events were refused with 503.
    """
    print(f"  {name} ...", file=sys.stderr, flush=True)
    hey(url, str(body), warm_up, connections, content_type, accepted)
    before = rejected_events(metrics_url) if metrics_url else {}
    with sampler.running() if sampler else contextlib.nullcontext():
        result = hey(url, str(body), seconds, connections, content_type, accepted)
    after = rejected_events(metrics_url) if metrics_url else {}
    requests = result["ok"] + result["other"] + result["failed"]
    refused = [f"{int(v)} x {k.split()[1]}" for k, v in result.items() if k.startswith("status ")]
    if result["failed"]:
        refused.append(f"{int(result['failed'])} without an answer")
    reasons = [f"{key}: {after[key] - before.get(key, 0):.0f}" for key in after if after[key] > before.get(key, 0)]
    if reasons:
        refused.append(f"events refused ({', '.join(reasons)})")
    return Row(
        name, per_request, result["rps"], result["rps"] * per_request * result["ok"] / requests if requests else 0.0,
        result["p99"], result["other"] + result["failed"], sampler.peak / 2**20 if sampler else math.nan,
        note=f"not {accepted}: {', '.join(refused)}" if refused else "",
    )


def producer_conf(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """The application profile's librdkafka configuration, as the gateway builds it."""
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_CLIENT_ID": "bench-raw"})
    return {**profile_producer_config(settings, "application"), **overrides}


# A record for the raw producer: key, value and headers (a list of name and value, or None).
RawRecord = tuple[bytes, bytes, Any]


def raw_producer(name: str, bootstrap: str, topic: str, records: list[RawRecord], seconds: float) -> Row:
    """Produce ``(key, value, headers)`` records for ``seconds``, then flush: deliveries acknowledged
    per second of the whole run."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    delivered = [0, 0]  # acknowledged, failed

    def on_delivery(err: Any, _msg: Any) -> None:
        delivered[1 if err else 0] += 1

    producer = confluent_kafka.Producer({**producer_conf(bootstrap), "on_delivery": on_delivery})
    produce, poll = producer.produce, producer.poll
    started = time.monotonic()
    deadline = started + seconds
    i = 0
    count = len(records)
    while time.monotonic() < deadline:
        for _ in range(1000):
            key, value, headers = records[i % count]
            try:
                produce(topic, value, key, headers=headers)
            except BufferError:
                poll(0.01)
                continue
            i += 1
        poll(0)
    producer.flush(60)
    elapsed = time.monotonic() - started
    return Row(name, 1, math.nan, delivered[0] / elapsed, errors=delivered[1])


def gateway_records(events: list[dict[str, Any]]) -> list[RawRecord]:
    """The records the gateway writes for these events: the value with its event id and times, the
    source as key, and the event-id, traceparent and x-request-id headers."""
    logs = [decode_log(compact(event)) for event in events]
    records, _ = log_records(logs, request_context(None, None, None).kafka_headers())
    return [(record.key, record.value, record.headers) for record in records]


def stored_bytes(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """The size of each topic's log on the broker (kafka-log-dirs --describe)."""
    out = subprocess.run(
        ["java", "-cp", f"{KAFKA_LIB}/*", "org.apache.kafka.tools.LogDirsCommand",
         "--bootstrap-server", bootstrap, "--describe", "--topic-list", ",".join(topics)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    described = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    sizes = dict.fromkeys(topics, 0)
    for broker in described["brokers"]:
        for log_dir in broker["logDirs"]:
            for partition in log_dir["partitions"]:
                topic = partition["partition"].rsplit("-", 1)[0]
                if topic in sizes:
                    sizes[topic] += partition["size"]
    return sizes


def compression_rows(bootstrap: str, admin: AdminClient, prefix: str, values: list[bytes]) -> list[Row]:
    """The same events produced with lz4 and without compression: what the broker stored."""
    print("  lz4 vs none ...", file=sys.stderr, flush=True)
    topics = {codec: f"{prefix}-codec-{codec}" for codec in ("lz4", "none")}
    create_topics(admin, list(topics.values()), partitions=1)
    for codec, topic in topics.items():
        producer = confluent_kafka.Producer(producer_conf(bootstrap, **{"compression.type": codec}))
        for i in range(COMPRESSION_EVENTS):
            while True:
                try:
                    producer.produce(topic, values[i % len(values)], b"app-%d" % (i % 7))
                    break
                except BufferError:
                    producer.poll(0.01)
            if i % 1000 == 0:
                producer.poll(0)
        if producer.flush(60):
            raise SystemExit(f"{codec}: not every event was acknowledged")
    try:
        sizes = stored_bytes(bootstrap, list(topics.values()))
    except (OSError, subprocess.SubprocessError, StopIteration, KeyError, ValueError) as error:
        return [Row(f"bytes stored, {COMPRESSION_EVENTS:,} events", note=f"n/a: {error}")]
    lz4, none = sizes[topics["lz4"]], sizes[topics["none"]]
    return [
        Row(f"bytes stored, {COMPRESSION_EVENTS:,} events, none", note=f"{none / 2**20:.1f} MiB"),
        Row(
            f"bytes stored, {COMPRESSION_EVENTS:,} events, lz4", ratio=lz4 / none, against="none",
            note=f"{lz4 / 2**20:.1f} MiB, {1 - lz4 / none:.0%} less",
        ),
    ]


def create_topics(admin: AdminClient, topics: list[str], partitions: int = 3) -> None:
    futures = admin.create_topics([NewTopic(topic, partitions) for topic in topics], operation_timeout=30)
    for future in futures.values():
        future.result(timeout=60)


def delete_topics(admin: AdminClient, prefix: str) -> None:
    names = [name for name in admin.list_topics(timeout=30).topics if name.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(confluent_kafka.KafkaException):
                future.result(timeout=60)


@contextlib.contextmanager
def database_schema(database_url: str) -> Iterator[str]:
    """A schema of the bench's own in the shared database, dropped afterwards; yields its URL."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in database_url else "?"
    try:
        yield f"{database_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- the Strimzi Kafka Bridge -------------------------------------------------------------------


def bridge_classpath(lib: Path) -> Path | None:
    """The bridge's jars in ``lib``, fetched with Maven when missing; None when they cannot be had."""
    if any(lib.glob("kafka-bridge-*.jar")):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        return None
    partial = lib.with_name(f"{lib.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(BRIDGE_POM), "dependency:copy-dependencies",
         f"-Dbridge.lib.dir={partial}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0 or not any(partial.glob("kafka-bridge-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        print((result.stdout + result.stderr).strip()[-2000:], file=sys.stderr)
        return None
    partial.rename(lib)
    return lib


@contextlib.contextmanager
def bridge(lib: Path, bootstrap: str, tmp: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The bridge on a free port with the application profile's producer settings."""
    port = free_port()
    config = tmp / "bridge.properties"
    config.write_text(
        "\n".join([
            "bridge.id=bench",
            f"kafka.bootstrap.servers={bootstrap}",
            "kafka.producer.acks=1",
            "kafka.producer.compression.type=lz4",
            "kafka.producer.batch.size=32768",
            "kafka.producer.linger.ms=10",
            "http.host=127.0.0.1",
            f"http.port={port}",
            "http.consumer.enabled=false",
            "http.producer.enabled=true",
        ]) + "\n"
    )
    with (tmp / "bridge.log").open("wb") as log:
        process = subprocess.Popen(
            ["java", "-Xmx512m", f"-Dvertx.cacheDirBase={tmp / 'vertx'}", "-cp", f"{lib}/*",
             "io.strimzi.kafka.bridge.Application", f"--config-file={config}"],
            cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def bridge_rows(
    lib_dir: Path, bootstrap: str, admin: AdminClient, prefix: str, tmp: Path, events: list[dict[str, Any]], seconds: float
) -> list[Row]:
    lib = bridge_classpath(lib_dir)
    if lib is None:
        reason = f"n/a: io.strimzi:kafka-bridge:{BRIDGE_VERSION} could not be fetched into {lib_dir}"
        return [Row("Strimzi bridge, 1 record per request", note=reason), Row("Strimzi bridge, 500 records per request", note=reason)]
    topic = f"{prefix}-bridge"
    create_topics(admin, [topic])
    single, batch = tmp / "bridge-single.json", tmp / "bridge-batch.json"
    single.write_bytes(compact({"records": [{"key": events[0]["source"], "value": events[0]}]}))
    batch.write_bytes(compact({"records": [{"key": e["source"], "value": e} for e in events[:500]]}))
    with bridge(lib, bootstrap, tmp) as (port, process):
        sampler = RssSampler(process.pid)
        url = f"http://127.0.0.1:{port}/topics/{topic}"
        return [
            drive("Strimzi bridge, 1 record per request", url, single, 1, SINGLE_CONNECTIONS, seconds, sampler,
                  BRIDGE_TYPE, "200", BRIDGE_WARM_UP),
            drive("Strimzi bridge, 500 records per request", url, batch, 500, BATCH_CONNECTIONS, seconds, sampler,
                  BRIDGE_TYPE, "200", BRIDGE_WARM_UP),
        ]


# -- the run -----------------------------------------------------------------------------------


def paired(ceiling: Callable[[], Row], measured: Callable[[], Row], rounds: int = PAIRED_ROUNDS) -> tuple[Row, Row]:
    """Both steps in turn, ``rounds`` times: the median row of each, ``measured`` with the median of
    the rounds' ratios. On two shared cores, runs minutes apart differ by tens of percent; one
    after the other, both see the same machine."""
    pairs = [(ceiling(), measured()) for _ in range(rounds)]
    ratios = sorted(row.rps / base.rps for base, row in pairs)
    base = sorted((base for base, _ in pairs), key=lambda row: row.rps)[rounds // 2]
    row = sorted((row for _, row in pairs), key=lambda row: row.rps)[rounds // 2]
    row.ratio, row.against = ratios[rounds // 2], f"bare hypercorn, median of {rounds} paired runs"
    return base, row


def gateway_rows(
    services: dict[str, str], prefix: str, tmp: Path, events: list[dict[str, Any]], seconds: float,
    bare: Callable[[], Row], bare_port: int,
) -> tuple[Row, list[Row], Row]:
    bodies = {
        "single": compact(events[0]),
        "batch100": compact({"logs": events[:100]}),
        "batch500": compact({"logs": events[:500]}),
        "tx1": compact({"userId": "user-1", "type": "PAYMENT", "amount": "99.99", "currency": "USD"}),
        "tx100": compact({"transactions": [
            {"userId": f"user-{i}", "type": "PAYMENT", "amount": "99.99", "currency": "USD"} for i in range(100)
        ]}),
        "metrics100": compact({"metrics": [
            {"host": f"web-{i % 5}", "metric": "system.memory.used", "value": 1.2e9 + i, "unit": "bytes"} for i in range(100)
        ]}),
    }
    bodies["otlp500"] = otlp_body(500)  # 500 log records as OTLP/HTTP protobuf, beside the JSON batches
    files = {}
    for name, body in bodies.items():
        files[name] = tmp / f"{name}.json"
        files[name].write_bytes(body)
    topics = {
        "APPLICATION_TOPIC": f"{prefix}-application-logs",
        "INFRASTRUCTURE_TOPIC": f"{prefix}-infrastructure-logs",
        "TRANSACTION_TOPIC": f"{prefix}-transaction-logs",
    }
    rows = []
    with database_schema(services["DATABASE_URL"]) as database_url:
        with gateway_process("transaction", **UNLIMITED, **topics, DATABASE_URL=database_url) as (ports, process):
            sampler = RssSampler(process.pid)

            def url(listener: str, path: str) -> str:
                return f"http://127.0.0.1:{ports[listener]}{path}"

            def step(
                name: str, listener: str, path: str, body: str, per_request: int, connections: list[str],
                content_type: str = "application/json", accepted: str = "202",
            ) -> Row:
                return drive(name, url(listener, path), files[body], per_request, connections, seconds, sampler,
                             content_type=content_type, accepted=accepted, metrics_url=url(listener, "/metrics"))

            def half(name: str, listener: str, path: str, body: str, maximum: Row) -> Row:
                return open_loop_row(name, ports[listener], path, bodies[body], maximum.rps / 2, seconds)

            bare_row, single = paired(
                bare, lambda: step("gateway, single, 8081", "application", "/api/v1/logs", "single", 1, SINGLE_CONNECTIONS)
            )
            # The log steps first, each open-loop row right after its closed-loop row: the transaction
            # steps leave the kernel writing PostgreSQL's and Kafka's pages back for half a minute, on
            # the same two cores. The rows are listed in the order of ``GATEWAY_ROWS`` all the same.
            measured = {"single": single}
            measured["single_half"] = half(
                "gateway, single, 8081, open loop at half its maximum", "application", "/api/v1/logs", "single", single
            )
            # The HTTP layer's own tail under the same schedule: what the gateway's p99 compares with.
            measured["bare_half"] = open_loop_row(
                "bare ASGI on hypercorn-trio, open loop at the same rate", bare_port, "/", bodies["single"],
                single.rps / 2, seconds,
            )
            measured["single8080"] = step(
                "gateway, single, through 8080", "gateway", "/api/v1/logs", "single", 1, SINGLE_CONNECTIONS
            )
            measured["batch100"] = step(
                "gateway, log batch of 100, 8081", "application", "/api/v1/logs/batch", "batch100", 100, BATCH_CONNECTIONS
            )
            measured["batch500"] = step(
                "gateway, log batch of 500, 8081", "application", "/api/v1/logs/batch", "batch500", 500, BATCH_CONNECTIONS
            )
            measured["otlp500"] = step(
                "gateway, OTLP logs, 500 records, 8081", "application", "/v1/logs", "otlp500", 500, BATCH_CONNECTIONS,
                content_type="application/x-protobuf", accepted="200",
            )
            measured["metrics100"] = step(
                "gateway, metrics batch of 100, 8082", "infrastructure", "/api/v1/metrics/batch", "metrics100", 100,
                BATCH_CONNECTIONS,
            )
            measured["tx1"] = step(
                "gateway, single transaction, 8083", "transaction", "/api/v1/transactions", "tx1", 1, SINGLE_CONNECTIONS
            )
            measured["tx1_half"] = half(
                "gateway, single transaction, open loop at half its maximum", "transaction", "/api/v1/transactions",
                "tx1", measured["tx1"],
            )
            measured["tx100"] = step(
                "gateway, transaction batch of 100, 8083", "transaction", "/api/v1/transactions/batch", "tx100", 100,
                BATCH_CONNECTIONS,
            )
            rows += [measured[key] for key in GATEWAY_ROWS]
    settle()
    with gateway_process("application", "--no-postgres", args=["--role", "application", "--workers", "2"],
                         **UNLIMITED, **topics) as (ports, process):
        time.sleep(2)  # the second copy
        sampler = RssSampler(process.pid)
        workers = drive("gateway --workers 2, single, 8081", f"http://127.0.0.1:{ports['application']}/api/v1/logs",
                        files["single"], 1, SINGLE_CONNECTIONS, seconds, sampler)
        # For the record only: the batch targets are judged on one process.
        rows.append(drive("gateway --workers 2, log batch of 500", f"http://127.0.0.1:{ports['application']}/api/v1/logs/batch",
                          files["batch500"], 500, BATCH_CONNECTIONS, seconds, sampler))
    return bare_row, rows, workers


def open_loop_row(name: str, port: int, path: str, body: bytes, rate: float, seconds: float) -> Row:
    """Requests on a fixed schedule (scripts/httpload.py), latency from the scheduled time: a slow
    answer cannot hide the ones it delays (no coordinated omission). Measured OPEN_LOOP_RUNS times;
    the row is the run with the median p99, and its note gives every run's."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    request = request_bytes(f"127.0.0.1:{port}", path, body)
    # The closed-loop step before leaves work behind (the outbox relay publishing its backlog, the
    # kernel writing dirty pages back): let the machine settle, and warm the schedule up, first.
    settle()
    trio.run(open_loop, "127.0.0.1", port, request, rate, WARM_UP)
    runs = []
    for _ in range(OPEN_LOOP_RUNS):
        answers = trio.run(open_loop, "127.0.0.1", port, request, rate, seconds)
        accepted = sorted(answer.latency for answer in answers if answer.status == 202)
        p99 = accepted[min(len(accepted) - 1, int(len(accepted) * 0.99))] * 1000 if accepted else math.nan
        runs.append(Row(name, 1, len(answers) / seconds, len(accepted) / seconds, p99, len(answers) - len(accepted)))
    row = median_p99(runs)
    row.note = f"{rate:,.0f} requests/s offered; p99 of the runs: " + ", ".join(f"{run.p99:.1f}" for run in runs) + " ms"
    return row


def settle() -> None:
    """Wait OPEN_LOOP_SETTLE seconds, write the dirty pages back, then wait until the machine's
    CPUs are quiet (bounded). Without the sync, the kernel writes the previous steps' pages back
    when they expire, 30 s later: in the middle of the next measurement, on the same cores."""
    time.sleep(OPEN_LOOP_SETTLE)
    os.sync()
    deadline = time.monotonic() + SETTLE_AT_MOST
    while time.monotonic() < deadline and psutil.cpu_percent(interval=1.0) > QUIET_CPU_PERCENT:
        pass


def median_p99(runs: list[Row]) -> Row:
    """The run with the median p99 (a run without a figure counts as the slowest)."""
    ordered = sorted(runs, key=lambda run: math.inf if math.isnan(run.p99) else run.p99)
    return ordered[len(ordered) // 2]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(rows: dict[str, Row]) -> list[str]:
    """One line per target, from the figures of this run; a missing figure fails its target."""
    raw = rows["raw"].events
    single, batch500, workers = rows["single"], rows["batch500"], rows["workers"]
    bridge500 = rows.get("bridge500")
    gateway_rss = max(
        (row.rss_mb for key, row in rows.items() if key not in {"bridge1", "bridge500", "bare"} and not math.isnan(row.rss_mb)),
        default=math.nan,
    )
    lines = [
        f"{verdict(batch500.events >= 250_000)}  log batch of 500 >= 250,000 events/s ({batch500.events:,.0f})",
        f"{verdict(batch500.events >= 0.5 * raw)}  log batch of 500 >= 0.5 x raw producer of the same records "
        f"({batch500.events / raw:.2f} x)",
        f"{verdict(single.ratio >= 0.85)}  single on 8081 >= 0.85 x bare hypercorn ({single.ratio:.2f} x, "
        f"median of {PAIRED_ROUNDS} paired runs)",
        f"{verdict(workers.rps >= WORKERS_CLEARLY_MORE * single.rps)}  --workers 2 >= {WORKERS_CLEARLY_MORE} x one process "
        f"({workers.rps / single.rps:.2f} x)",
    ]
    if bridge500 is not None and not math.isnan(bridge500.events):
        lines.append(
            f"{verdict(batch500.events >= bridge500.events)}  log batch of 500 >= the bridge's 500-record batches "
            f"({batch500.events / bridge500.events:.2f} x)"
        )
    else:
        lines.append("FAIL  log batch of 500 >= the bridge's 500-record batches (no bridge figure)")
    for key, what, limit in (("single_half", "single events", 15), ("tx1_half", "single transactions", 50)):
        p99 = rows[key].p99 if key in rows else math.nan
        beside = f"; bare hypercorn at the same rate {rows['bare_half'].p99:.1f} ms" if key == "single_half" and "bare_half" in rows else ""
        lines.append(
            f"{verdict(p99 < limit)}  {what} at half their maximum, open loop: p99 < {limit} ms "
            f"({p99:.1f} ms, median of {OPEN_LOOP_RUNS} runs{beside})"
        )
    lines.append(f"{verdict(gateway_rss < 256)}  gateway peak RSS < 256 MB ({gateway_rss:.0f} MB, largest process)")
    return lines


def print_table(rows: list[Row]) -> None:
    def number(value: float, spec: str) -> str:
        return "" if math.isnan(value) else format(value, spec)

    header = f"{'run':<44}{'ev/req':>7}{'req/s':>9}{'events/s':>11}{'p99 ms':>9}{'errors':>8}{'RSS MB':>8}{'ratio':>7}  vs / note"
    print(header)
    print("-" * len(header))
    for row in rows:
        against = row.against + (f"; {row.note}" if row.against and row.note else row.note)
        print(
            f"{row.name:<44}{row.per_request:>7}{number(row.rps, ',.0f'):>9}{number(row.events, ',.0f'):>11}"
            f"{number(row.p99, '.1f'):>9}{number(row.errors, '.0f'):>8}{number(row.rss_mb, '.0f'):>8}"
            f"{number(row.ratio, '.2f'):>7}  {against}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured step (default 10)")
    parser.add_argument("--no-bridge", action="store_true", help="skip the Strimzi Kafka Bridge")
    parser.add_argument(
        "--bridge-lib", type=Path, default=BRIDGE_LIB,
        help="the bridge's jars (default .local/kafka-bridge/lib, fetched with ops/kafka-bridge/pom.xml when empty)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    require_hey()
    services = infra_up()
    bootstrap = services["KAFKA_BOOTSTRAP_SERVERS"]
    rng = random.Random(1)
    events = [log_event(rng, i) for i in range(1000)]
    values = [compact(event) for event in events]
    print(f"event size: {sum(map(len, values)) / len(values):.0f} bytes on average", file=sys.stderr)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    rows: dict[str, Row] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            raw_topic = f"{prefix}-raw"
            create_topics(admin, [raw_topic])
            # The ceiling: the very records the gateway writes. For reference, the events' JSON alone.
            rows["raw"] = raw_producer(
                "raw confluent-kafka producer (ceiling)", bootstrap, raw_topic, gateway_records(events), args.seconds
            )
            rows["raw_plain"] = raw_producer(
                "raw producer, event JSON alone, no headers", bootstrap, raw_topic,
                [(b"app-%d" % (i % 7), value, None) for i, value in enumerate(values)], args.seconds,
            )
            single = tmp / "bare.json"
            single.write_bytes(values[0])
            with bare_server() as (port, process):
                def bare() -> Row:
                    return drive("bare ASGI on hypercorn-trio (ceiling)", f"http://127.0.0.1:{port}/", single, 1,
                                 SINGLE_CONNECTIONS, args.seconds, RssSampler(process.pid))

                rows["bare"], gateway, workers = gateway_rows(services, prefix, tmp, events, args.seconds, bare, port)
            keys = (*GATEWAY_ROWS, "workers500")
            assert len(keys) == len(gateway), "one key per gateway row"
            for key, row in zip(keys, gateway):
                rows[key] = row
            rows["workers"] = workers
            if not args.no_bridge:
                rows["bridge1"], rows["bridge500"] = bridge_rows(
                    args.bridge_lib, bootstrap, admin, prefix, tmp, events, args.seconds
                )
            codec = compression_rows(bootstrap, admin, prefix, values)
    finally:
        delete_topics(admin, prefix)

    raw = rows["raw"].events
    rows["single8080"].ratio = rows["single8080"].rps / rows["bare"].rps
    rows["single8080"].against = "bare hypercorn (median)"
    for key in ("batch100", "batch500", "otlp500", "tx100", "metrics100", "workers500"):
        rows[key].ratio, rows[key].against = rows[key].events / raw, "raw producer"
    rows["workers"].ratio, rows["workers"].against = rows["workers"].rps / rows["single"].rps, "one process, 8081"
    if "bridge500" in rows and not math.isnan(rows["bridge500"].events):
        rows["bridge1"].ratio, rows["bridge1"].against = rows["single"].rps / rows["bridge1"].rps, "gateway single / this"
        rows["bridge500"].ratio, rows["bridge500"].against = rows["batch500"].events / rows["bridge500"].events, "gateway batch-500 / this"
    order = [
        "raw", "raw_plain", "bare", "single", "single_half", "bare_half", "tx1", "tx1_half", "single8080", "batch100", "batch500",
        "otlp500", "tx100", "metrics100", "workers", "workers500", "bridge1", "bridge500",
    ]
    print_table([rows[key] for key in order if key in rows] + codec)
    print()
    for line in targets(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
