#!/usr/bin/env python3
"""Ceilings, the gateway and the Strimzi Kafka Bridge, measured in one run against the local Kafka.

Every step is bounded (``--seconds`` each, after a short warm-up) and runs with the rate limits
off. HTTP load comes from ``hey`` (not Python, so the load generator is not what is measured):
single events at 64 connections, batches at 16. Events are log JSON of about 100 bytes.

1. ceilings: a raw confluent-kafka produce loop with the application profile's librdkafka
   configuration producing the very records the gateway writes for the events (value with event
   id and times, key, the event-id/traceparent/x-request-id headers; reports of failures only,
   as the gateway's producer of records nobody follows; events acknowledged per second), the
   same loop with the events' JSON alone and no headers for reference, and a bare ASGI callable
   on hypercorn-trio that parses the body with msgspec and answers 202 (requests per second);
2. the gateway, ``python -m app`` as its own process: single events on 8081 and through 8080,
   log batches of 100 and 500, transaction and metrics batches of 100, and ``--workers 2``; beside
   the batch of 500, the same events (or 500 samples) in the wire formats of its dialects: OTLP
   over HTTP and gRPC, Prometheus remote_write, Elasticsearch ``_bulk``, Splunk HEC, Loki push
   (snappy protobuf and JSON), collectd write_http, syslog over TCP and Fluentd forward (with and
   without acks), the socket and gRPC ones driven by threads of this process
   (scripts/bench_dialects.py builds every body); and a second gateway process in disk mode
   (``APPLICATION_DURABILITY=disk``, a spool folder of its own under .local) for batches of 500
   and for single events under the memory-mode open-loop row's schedule; and a third one with TLS
   on 8081 (a self-signed RSA 2048 certificate) for single events and batches of 500, each beside
   the same row in plain HTTP, its note counting the connections ``hey`` opened, each a full
   handshake (at 64 connections its client dials a new one for most requests; at 16, few);
3. the Strimzi Kafka Bridge 0.33.1 (Java, ``-Xmx512m``, the same producer settings): one record
   and 500 records per request. Its jars are taken from ``--bridge-lib`` (fetched with
   ``ops/kafka-bridge/pom.xml`` when empty; Maven Central does not serve the bridge, so docs/benchmarks.md
   says how to build them); without them its rows say why they are missing;
4. the bytes the broker stored for the same events with lz4 and without compression, and the
   gateway's peak RSS per configuration (the largest process, sampled during the run).

Every row with accepted events also gives the CPU time per accepted event (``CPU µs/ev``): user
and system time of the server's processes (the process and all its children) over the measured
step, or of this process for the raw producer loops, which run in it.

``--only ROWS`` runs a subset (row keys such as ``single,batch500``; an unknown key lists them),
with the rows a selected one needs (an open-loop row's closed-loop row). ``--baseline COMMIT``
checks that commit out in a temporary git worktree and measures its gateway too, from that tree
with this venv, each of its steps right after this code's: extra rows labelled with its short hash,
and a ``vs baseline`` column (CPU µs/ev and events/s, this code's over the baseline's).

Prints one table, then a PASS/FAIL line per target. Bench topics (and the database schemas of
the transaction runs) are deleted at the end, the spool folders and the worktree too.

    .venv/bin/python scripts/bench.py [--seconds 10] [--no-bridge] [--only ROWS] [--baseline COMMIT]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import hypercorn.trio
import msgspec
import psutil
import psycopg
import trio
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Everything this script takes from app/, in one place (the gateway itself runs as `python -m app`).
from app.config import load_settings  # noqa: E402
from app.events import decode_log  # noqa: E402
from app.observability.tracing import request_context  # noqa: E402
from app.runtime import hypercorn_config, profile_producer_config  # noqa: E402
from app.streams import log_records  # noqa: E402
from scripts.bench_dialects import (  # noqa: E402
    AckedForwardLoad, GrpcLoad, Load, StreamLoad, collectd_body, es_bulk_body, forward_entries, forward_message,
    hec_body, listening, loki_json_body, loki_protobuf_body, remote_write_body, syslog_frames,
)
from scripts.bench_otlp import otlp_body  # noqa: E402
from scripts.bench_support import (  # noqa: E402
    ROOT, app_env, free_port, gateway_process, hey, infra_up, percentile, require_hey,
)
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
# The rows of a third gateway process with TLS on 8081 (the application listener), and the row in plain
# HTTP each is the twin of (and is judged against).
TLS_ROWS = {"single_tls": "single", "batch500_tls": "batch500"}
TLS_LISTENERS = frozenset({"application"})
# Every row's key (what --only takes), in the table's order; "codec" is the bytes-stored rows.
ROW_KEYS = (
    "raw", "raw_plain", "bare", "single", "single_half", "single_half_disk", "bare_half", "tx1", "tx1_half",
    "single8080", "single_tls", "batch100", "batch500", "batch500_disk", "batch500_tls", "otlp500", "otlp_grpc",
    "remote_write", "es_bulk", "hec", "loki", "loki_json", "collectd", "syslog", "forward", "forward_ack", "tx100",
    "metrics100", "workers", "workers500", "bridge1", "bridge500", "codec",
)
# An open-loop row runs at half the rate its closed-loop row reached: selecting it selects that row. A
# disk-mode row is judged against its memory-mode row: selecting it selects that one (and what it needs).
NEEDS = {
    "single_half": "single", "bare_half": "single", "tx1_half": "tx1", "single_half_disk": "single_half",
    "batch500_disk": "batch500", **TLS_ROWS,
}
# The rows of a second gateway process like the first but for APPLICATION_DURABILITY=disk (app/spool/).
DISK_ROWS = frozenset({"batch500_disk", "single_half_disk"})
# The rows of the dialects beside the native batch route (their ratio is against it): over HTTP with
# hey, then over the socket listeners (syslog, forward) and OTLP/gRPC with the loads of bench_dialects.
DIALECT_ROWS = ("otlp500", "otlp_grpc", "remote_write", "es_bulk", "hec", "loki", "loki_json", "collectd",
                "syslog", "forward", "forward_ack")
# The rows of the gateway process (transaction role, so every listener), in the order they are
# measured: the log steps first, each open-loop row right after its closed-loop row. The transaction
# steps leave the kernel writing PostgreSQL's and Kafka's pages back for half a minute, on the same
# two cores. ("single" is measured first, in turn with bare hypercorn.)
GATEWAY_ORDER = (
    "single", "single_half", "single_half_disk", "bare_half", "single8080", "single_tls", "batch100", "batch500",
    "batch500_disk", "batch500_tls", *DIALECT_ROWS, "metrics100", "tx1", "tx1_half", "tx100",
)
# ... and those of a second gateway process with --workers 2.
WORKERS_ROWS = ("workers", "workers500")
# The rows a baseline commit is measured for too: the gateway's (bare_half is bare hypercorn's).
BASELINE_ROWS = frozenset(GATEWAY_ORDER + WORKERS_ROWS) - {"bare_half"}
# Open-loop rows: this many measured runs; the row is the median one by p99.
OPEN_LOOP_RUNS = 3
# The JVM compiles its hot paths during the first seconds of load.
BRIDGE_WARM_UP = 10.0
COMPRESSION_EVENTS = 200_000
WORKERS_CLEARLY_MORE = 1.25
# Disk mode against memory mode: batches of 500 at this share of the events/s or more, and single
# events under the same open-loop schedule at most this much slower at the p99.
DISK_BATCH_SHARE = 0.7
DISK_P99_MORE_MS = 10.0
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
    cpu_us: float = math.nan  # CPU time per accepted event over the measured step, in µs
    vs_cpu: float = math.nan  # cpu_us over the baseline commit's
    vs_events: float = math.nan  # events over the baseline commit's


def ratio(value: float, base: float) -> float:
    """``value / base``, nan when there is no base figure (nan or 0)."""
    return value / base if base and not math.isnan(base) else math.nan


# -- CPU accounting ------------------------------------------------------------------------------


def cpu_seconds(times: Any) -> float:
    """User and system time from one process's psutil ``cpu_times()``, with that of the children it
    has reaped (``children_*``; children still running are counted on their own)."""
    return float(times.user + times.system + times.children_user + times.children_system)


def tree_cpu_seconds(pid: int) -> float:
    """The CPU time a process and all its descendants have used so far (``--workers 2`` forks
    copies); nan when the process is gone. A descendant that exits in between is counted in its
    parent's ``children_*`` once reaped, so the sum stays monotonic."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        total = cpu_seconds(root.cpu_times())
    except psutil.Error:
        return math.nan
    for process in processes[1:]:
        with contextlib.suppress(psutil.Error):
            total += cpu_seconds(process.cpu_times())
    return total


def per_event_us(before: float, after: float, events: float) -> float:
    """CPU µs per accepted event from two CPU-second samples; nan without events or samples."""
    if not events > 0 or math.isnan(before) or math.isnan(after):
        return math.nan
    return (after - before) * 1e6 / events


@dataclass
class RssSampler:
    """The peak RSS of the largest process in a tree, sampled every 100 ms while it runs; ``pid`` is
    also the process whose tree's CPU time :func:`drive` takes."""

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

    With ``sampler``, the peak RSS and the CPU time per accepted event of the server's process tree
    over the measured run (sampled right before and right after it, so neither the warm-up nor the
    /metrics scrapes count). With ``metrics_url`` (a gateway's /metrics) the note says why events
    were refused with 503.
    """
    print(f"  {name} ...", file=sys.stderr, flush=True)
    hey(url, str(body), warm_up, connections, content_type, accepted)
    before = rejected_events(metrics_url) if metrics_url else {}
    with sampler.running() if sampler else contextlib.nullcontext():
        cpu_before = tree_cpu_seconds(sampler.pid) if sampler else math.nan
        result = hey(url, str(body), seconds, connections, content_type, accepted)
        cpu_after = tree_cpu_seconds(sampler.pid) if sampler else math.nan
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
        cpu_us=per_event_us(cpu_before, cpu_after, result["ok"] * per_request),
    )


def counter_total(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of the samples of counter ``name`` (``..._total``) at ``metrics_url`` whose labels include ``labels``."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        return counter_in(response.read().decode(), name, **labels)


def counter_in(text: str, name: str, **labels: str) -> float:
    """:func:`counter_total` of a scrape's text."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[1] or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match[2])
    return total


def socket_row(name: str, spec: SocketStep, make_load: Callable[[], Load], server: Server, seconds: float) -> Row:
    """A warm-up, then ``seconds`` of the load ``make_load`` builds, the same window for the server's
    CPU and for what it took: the accepted counter of ``spec.counted`` between scrapes right around
    the window, else the requests answered (and taken) within it, with their p99 from the send.
    A gateway without the listener (a baseline from before it) gives a row that says so."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    port = server.ports[spec.port]
    if not listening(port):
        return Row(name, spec.per_request, note=f"n/a: nothing listens on the {spec.port} port")
    metrics_url = server.url("application", "/metrics")
    labels = {"service": "application", "dialect": spec.counted, "outcome": "accepted"}

    def taken() -> float:
        return counter_total(metrics_url, "gateway_ingest_events_total", **labels) if spec.counted else math.nan

    load = make_load()
    with load.running():
        time.sleep(WARM_UP)
        before = taken()
        with server.sampler.running():
            cpu_before, start = tree_cpu_seconds(server.sampler.pid), time.monotonic()
            time.sleep(seconds)
            cpu_after, end = tree_cpu_seconds(server.sampler.pid), time.monotonic()
        after = taken()
    if spec.counted:
        drained(taken)
    elapsed = end - start
    answered = load.within(start, end)
    ok = [completion for completion in answered if completion.ok]
    events = after - before if spec.counted else float(len(ok) * spec.per_request)
    requests = events / spec.per_request if spec.counted else float(len(answered))
    problems = [f"{count} x {why}" for why, count in sorted(load.refusals.items())]
    problems += [f"a connection failed: {failure}" for failure in load.failures[:3]]
    return Row(
        name, spec.per_request, requests / elapsed, events / elapsed,
        1000 * percentile([completion.latency for completion in ok], 0.99), float(len(answered) - len(ok) + len(load.failures)),
        server.sampler.peak / 2**20,
        note=f"{spec.connections} connections" + (f"; {', '.join(problems)}" if problems else ""),
        cpu_us=per_event_us(cpu_before, cpu_after, events),
    )


def drained(taken: Callable[[], float], at_most: float = 30.0) -> None:
    """Wait (bounded) until the count stops growing: the gateway has read what its sockets held, so
    the next step does not share the machine with the rest of this one."""
    deadline = time.monotonic() + at_most
    last = taken()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = taken()
        if now == last:
            return
        last = now


def producer_conf(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """The application profile's librdkafka configuration, as the gateway builds it."""
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_CLIENT_ID": "bench-raw"})
    return {**profile_producer_config(settings, "application"), **overrides}


# A record for the raw producer: key, value and headers (a list of name and value, or None).
RawRecord = tuple[bytes, bytes, Any]


def raw_producer(name: str, bootstrap: str, topic: str, records: list[RawRecord], seconds: float) -> Row:
    """Produce ``(key, value, headers)`` records for ``seconds``, then flush: deliveries acknowledged
    per second of the whole run. Its CPU per event is this process's ``time.process_time()`` over
    the loop and the flush: every thread of it, so librdkafka's too (as a gateway's figure has its
    librdkafka threads); nothing else runs in this process meanwhile."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    failed = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        failed[0] += 1

    # As the gateway's memory-mode producer of records nobody follows (app/kafka/producer.py):
    # reports of failures only, the successes counted as produced less failed once flushed.
    producer = confluent_kafka.Producer(
        {**producer_conf(bootstrap), "on_delivery": on_delivery, "delivery.report.only.error": True}
    )
    produce, poll = producer.produce, producer.poll
    started = time.monotonic()
    cpu_started = time.process_time()
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
    unsettled = producer.flush(60)
    elapsed = time.monotonic() - started
    delivered = i - failed[0] - unsettled
    cpu_us = per_event_us(cpu_started, time.process_time(), delivered)
    return Row(name, 1, math.nan, delivered / elapsed, errors=failed[0] + unsettled, cpu_us=cpu_us)


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


# -- the baseline commit -----------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A commit checked out in a worktree of its own, whose gateway is measured beside this code's."""

    commit: str  # the full hash
    short: str  # what its rows are labelled with
    root: Path  # the worktree


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def worktree_add_command(path: Path, commit: str) -> list[str]:
    """A detached worktree of ``commit`` at ``path`` (the repository's index and branches untouched)."""
    return ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), commit]


def worktree_remove_command(path: Path) -> list[str]:
    """Remove the worktree and its administrative files (``--force``: the run leaves __pycache__ in it)."""
    return ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)]


def imports_from(root: Path) -> Path:
    """Where ``python -m app`` started in ``root`` (as :func:`gateway_process` starts it) imports ``app`` from."""
    out = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=root, env=app_env(root, os.environ), check=True, capture_output=True, text=True,
    ).stdout
    return Path(out.strip()).resolve()


@contextlib.contextmanager
def baseline_worktree(commit: str) -> Iterator[Baseline]:
    """``commit`` checked out in a temporary worktree, removed at the end (also on Ctrl-C)."""
    try:
        full = git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"--baseline {commit}: not a commit of this repository") from None
    short = git("rev-parse", "--short", full)
    parent = Path(tempfile.mkdtemp(prefix=f"bench-baseline-{short}-"))
    path = parent / "tree"
    try:
        print(f"baseline {short}: worktree at {path}", file=sys.stderr, flush=True)
        subprocess.run(worktree_add_command(path, full), check=True)
        protos = path / "scripts" / "protos.py"
        if protos.exists():  # from 37b56c1 on, a tree compiles its protobuf modules (not committed) itself
            cache = ROOT / ".local" / "protos"
            subprocess.run([sys.executable, str(protos), "--cache", str(cache)], check=True, cwd=path, timeout=300)
        where = imports_from(path)
        if not where.is_relative_to(path.resolve()):
            raise SystemExit(f"--baseline: python -m app in {path} imports app from {where}")
        yield Baseline(full, short, path)
    finally:
        # A second Ctrl-C must not leave the worktree registered half-way through its removal.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            removed = subprocess.run(worktree_remove_command(path), capture_output=True, text=True)
            if removed.returncode != 0 and path.exists():
                print(f"could not remove the worktree {path} ({removed.stderr.strip()}); deleting it, "
                      "`git worktree prune` forgets it", file=sys.stderr)
            shutil.rmtree(parent, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, interrupt)


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


BRIDGE_NAMES = {"bridge1": "Strimzi bridge, 1 record per request", "bridge500": "Strimzi bridge, 500 records per request"}


def bridge_rows(
    lib_dir: Path, bootstrap: str, admin: AdminClient, prefix: str, tmp: Path, events: list[dict[str, Any]], seconds: float,
    keys: Collection[str] = tuple(BRIDGE_NAMES),
) -> dict[str, Row]:
    """The bridge's rows of ``keys`` (bridge1, bridge500); their CPU is the JVM's (the process started)."""
    keys = [key for key in BRIDGE_NAMES if key in keys]
    lib = bridge_classpath(lib_dir)
    if lib is None:
        reason = f"n/a: io.strimzi:kafka-bridge:{BRIDGE_VERSION} could not be fetched into {lib_dir}"
        return {key: Row(BRIDGE_NAMES[key], note=reason) for key in keys}
    topic = f"{prefix}-bridge"
    create_topics(admin, [topic])
    files = {"bridge1": tmp / "bridge-single.json", "bridge500": tmp / "bridge-batch.json"}
    files["bridge1"].write_bytes(compact({"records": [{"key": events[0]["source"], "value": events[0]}]}))
    files["bridge500"].write_bytes(compact({"records": [{"key": e["source"], "value": e} for e in events[:500]]}))
    shape = {"bridge1": (1, SINGLE_CONNECTIONS), "bridge500": (500, BATCH_CONNECTIONS)}
    with bridge(lib, bootstrap, tmp) as (port, process):
        sampler = RssSampler(process.pid)
        url = f"http://127.0.0.1:{port}/topics/{topic}"
        return {
            key: drive(BRIDGE_NAMES[key], url, files[key], shape[key][0], shape[key][1], seconds, sampler,
                       BRIDGE_TYPE, "200", BRIDGE_WARM_UP)
            for key in keys
        }


# -- the run -----------------------------------------------------------------------------------


def select_rows(only: str | None) -> tuple[str, ...]:
    """The row keys to run, in the table's order: every row, or those ``--only`` names (comma
    separated) and the rows they need, and theirs (an open-loop row's closed-loop row, a disk-mode
    row's memory-mode row)."""
    if only is None:
        return ROW_KEYS
    asked = [key.strip() for key in only.split(",") if key.strip()]
    unknown = [key for key in asked if key not in ROW_KEYS]
    if unknown or not asked:
        raise ValueError(f"--only: unknown rows {', '.join(unknown) or '(none given)'}; the rows are {', '.join(ROW_KEYS)}")
    chosen = set(asked)
    needing = list(asked)
    while needing:
        need = NEEDS.get(needing.pop())
        if need is not None and need not in chosen:
            chosen.add(need)
            needing.append(need)
    return tuple(key for key in ROW_KEYS if key in chosen)


def paired(
    ceiling: Callable[[], Row] | None, measured: Sequence[Callable[[], Row]], rounds: int = PAIRED_ROUNDS
) -> tuple[Row | None, list[Row]]:
    """The ceiling (when given) and then each measured step, in turn, ``rounds`` times: the median
    row of each, the measured ones with the median of the rounds' ratios to the ceiling. On two
    shared cores, runs minutes apart differ by tens of percent; one after the other, all see the
    same machine."""
    ceilings: list[Row] = []
    runs: list[list[Row]] = []
    for _ in range(rounds):
        if ceiling is not None:
            ceilings.append(ceiling())
        runs.append([step() for step in measured])

    def median(rows: list[Row]) -> Row:
        return sorted(rows, key=lambda row: row.rps)[len(rows) // 2]

    rows = []
    for i in range(len(measured)):
        row = median([steps[i] for steps in runs])
        if ceilings:
            ratios = sorted(ratio(steps[i].rps, base.rps) for base, steps in zip(ceilings, runs))
            row.ratio = ratios[rounds // 2]
            row.against = f"bare hypercorn, median of {rounds} paired runs" if rounds > 1 else "bare hypercorn"
        rows.append(row)
    return (median(ceilings) if ceilings else None), rows


@dataclass(frozen=True)
class Step:
    """A closed-loop step: ``hey`` against one listener's route."""

    name: str
    listener: str
    path: str
    body: str  # the key of its body
    per_request: int
    connections: list[str]
    content_type: str = "application/json"
    accepted: str = "202"
    metrics: bool = True  # explain 503s from the listener's /metrics
    headers: tuple[str, ...] = ()  # sent with every request, as its clients send them

    def hey_args(self) -> list[str]:
        """The connections, then ``-H`` per header."""
        return [*self.connections, *(arg for header in self.headers for arg in ("-H", header))]


STEPS = {
    "single": Step("gateway, single, 8081", "application", "/api/v1/logs", "single", 1, SINGLE_CONNECTIONS),
    "single8080": Step("gateway, single, through 8080", "gateway", "/api/v1/logs", "single", 1, SINGLE_CONNECTIONS),
    "batch100": Step(
        "gateway, log batch of 100, 8081", "application", "/api/v1/logs/batch", "batch100", 100, BATCH_CONNECTIONS
    ),
    "batch500": Step(
        "gateway, log batch of 500, 8081", "application", "/api/v1/logs/batch", "batch500", 500, BATCH_CONNECTIONS
    ),
    "otlp500": Step(
        "gateway, OTLP logs, 500 records, 8081", "application", "/v1/logs", "otlp500", 500, BATCH_CONNECTIONS,
        content_type="application/x-protobuf", accepted="200",
    ),
    "batch500_disk": Step(
        "gateway, log batch of 500, disk mode", "application", "/api/v1/logs/batch", "batch500", 500, BATCH_CONNECTIONS
    ),
    "single_tls": Step("gateway, single, 8081, TLS", "application", "/api/v1/logs", "single", 1, SINGLE_CONNECTIONS),
    "batch500_tls": Step(
        "gateway, log batch of 500, 8081, TLS", "application", "/api/v1/logs/batch", "batch500", 500, BATCH_CONNECTIONS
    ),
    # The dialects' wire formats, 500 events a request as their clients batch them (bench_dialects builds them).
    "remote_write": Step(
        "gateway, remote_write, 500 samples, 8082", "infrastructure", "/api/v1/write", "remote_write", 500,
        BATCH_CONNECTIONS, content_type="application/x-protobuf", accepted="204",
        headers=("Content-Encoding: snappy", "X-Prometheus-Remote-Write-Version: 0.1.0"),
    ),
    "es_bulk": Step(
        "gateway, Elasticsearch _bulk, 500 docs, 8081", "application", "/_bulk", "es_bulk", 500, BATCH_CONNECTIONS,
        content_type="application/x-ndjson", accepted="200",
    ),
    "hec": Step(
        "gateway, Splunk HEC, 500 events, 8081", "application", "/services/collector/event", "hec", 500,
        BATCH_CONNECTIONS, accepted="200", headers=("Authorization: Splunk bench-token",),
    ),
    "loki": Step(
        "gateway, Loki push, snappy protobuf, 500 lines", "application", "/loki/api/v1/push", "loki", 500,
        BATCH_CONNECTIONS, content_type="application/x-protobuf", accepted="204",
    ),
    "loki_json": Step(
        "gateway, Loki push, JSON, 500 lines, 8081", "application", "/loki/api/v1/push", "loki_json", 500,
        BATCH_CONNECTIONS, accepted="204",
    ),
    "collectd": Step(
        "gateway, collectd write_http, 500 values, 8082", "infrastructure", "/collectd", "collectd", 500,
        BATCH_CONNECTIONS, accepted="200",
    ),
    "metrics100": Step(
        "gateway, metrics batch of 100, 8082", "infrastructure", "/api/v1/metrics/batch", "metrics100", 100,
        BATCH_CONNECTIONS,
    ),
    "tx1": Step("gateway, single transaction, 8083", "transaction", "/api/v1/transactions", "tx1", 1, SINGLE_CONNECTIONS),
    "tx100": Step(
        "gateway, transaction batch of 100, 8083", "transaction", "/api/v1/transactions/batch", "tx100", 100,
        BATCH_CONNECTIONS,
    ),
    "workers": Step(
        "gateway --workers 2, single, 8081", "application", "/api/v1/logs", "single", 1, SINGLE_CONNECTIONS, metrics=False
    ),
    # For the record only: the batch targets are judged on one process.
    "workers500": Step(
        "gateway --workers 2, log batch of 500", "application", "/api/v1/logs/batch", "batch500", 500, BATCH_CONNECTIONS,
        metrics=False,
    ),
}
# Open-loop rows: their name, and the closed-loop row at half whose rate (and on whose route) they run.
OPEN_LOOPS = {
    "single_half": ("gateway, single, 8081, open loop at half its maximum", "single"),
    "single_half_disk": ("gateway, single, 8081, disk mode, open loop at the same rate", "single"),
    "tx1_half": ("gateway, single transaction, open loop at half its maximum", "tx1"),
}


@dataclass(frozen=True)
class SocketStep:
    """A step over a socket listener or OTLP/gRPC: a load of bench_dialects on ``port`` (a key of
    :attr:`Server.ports`) over ``connections`` connections, ``per_request`` events a frame, message or
    call. ``counted``: the dialect whose ``gateway_ingest_events_total{outcome="accepted"}`` counts
    what the gateway took (a load nothing answers); else what completed in the window is counted."""

    name: str
    port: str
    per_request: int
    connections: int
    counted: str = ""


SOCKET_CONNECTIONS = 4
SOCKET_STEPS = {
    "otlp_grpc": SocketStep("gateway, OTLP/gRPC logs, 500 records", "otlp-grpc", 500, 16),
    "syslog": SocketStep(
        "gateway, syslog TCP, octet-counted RFC 5424", "syslog", 1, SOCKET_CONNECTIONS, counted="syslog"
    ),
    "forward": SocketStep(
        "gateway, forward, chunks of 500, no acks", "forward", 500, SOCKET_CONNECTIONS, counted="forward"
    ),
    "forward_ack": SocketStep("gateway, forward, chunks of 500, acked", "forward", 500, SOCKET_CONNECTIONS),
}
# The environment variable of each socket port a gateway is given (free ports) when one of its rows runs.
SOCKET_PORTS = {"syslog": "SYSLOG_PORT", "forward": "FORWARD_PORT", "otlp-grpc": "OTLP_GRPC_PORT"}


@dataclass
class Server:
    """A server under test: its listeners' ports, and the sampler of its process (RSS, and the tree
    whose CPU is taken); ``label`` is a baseline's short hash ("" for this code)."""

    ports: dict[str, int]
    sampler: RssSampler
    label: str = ""
    tls: frozenset[str] = frozenset()  # the listeners that serve TLS

    def url(self, listener: str, path: str) -> str:
        return f"{'https' if listener in self.tls else 'http'}://127.0.0.1:{self.ports[listener]}{path}"

    def metrics_url(self, listener: str) -> str:
        """A listener's /metrics; for a TLS one, a plain listener's of the same process (the same
        registry), since urllib would not trust the self-signed certificate."""
        return self.url(next(name for name in self.ports if name not in self.tls) if listener in self.tls else listener,
                        "/metrics")

    def row_name(self, name: str) -> str:
        """A baseline's rows sit right under this code's: they are named by the commit alone."""
        return f"  baseline {self.label}" if self.label else name


def gateway_rows(
    services: dict[str, str], prefix: str, tmp: Path, events: list[dict[str, Any]], seconds: float,
    selected: Collection[str], baseline: Baseline | None = None,
) -> tuple[dict[str, Row], dict[str, Row]]:
    """Bare hypercorn's and the gateway's ``selected`` rows, by key; and the baseline commit's rows,
    each of its steps right after this code's (the open-loop ones at this code's rate)."""
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
    # The same 500 events in the dialects' wire formats; the metrics ones, 500 samples or values of agents.
    bodies.update({
        "remote_write": remote_write_body(500),
        "es_bulk": es_bulk_body(events[:500]),
        "hec": hec_body(events[:500]),
        "loki": loki_protobuf_body(events[:500]),
        "loki_json": loki_json_body(events[:500]),
        "collectd": collectd_body(500),
    })
    files = {}
    for name, body in bodies.items():
        files[name] = tmp / f"{name}.body"
        files[name].write_bytes(body)
    # What the socket loads write: every event once as syslog frames, or as two forward chunks of 500.
    syslog_payload = syslog_frames(events)
    forward_payload = b"".join(
        forward_message(forward_entries(events[start : start + 500]), 500) for start in range(0, len(events), 500)
    )

    def socket_load(key: str, port: int) -> Load:
        connections = SOCKET_STEPS[key].connections
        if key == "otlp_grpc":
            return GrpcLoad(port, bodies["otlp500"], connections)
        if key == "syslog":
            return StreamLoad(port, syslog_payload, connections)
        if key == "forward":
            return StreamLoad(port, forward_payload, connections)
        return AckedForwardLoad(port, forward_entries(events[:500]), 500, connections)

    socket_ports = {SOCKET_STEPS[key].port for key in SOCKET_STEPS if key in selected}
    # The trees whose gateways run: this one, and the baseline's worktree with topics of its own.
    trees = [("", ROOT, prefix)] + ([(baseline.short, baseline.root, f"{prefix}-{baseline.short}")] if baseline else [])
    rows: dict[str, Row] = {}
    based: dict[str, Row] = {}

    def topics(topic_prefix: str) -> dict[str, str]:
        return {
            "APPLICATION_TOPIC": f"{topic_prefix}-application-logs",
            "INFRASTRUCTURE_TOPIC": f"{topic_prefix}-infrastructure-logs",
            "TRANSACTION_TOPIC": f"{topic_prefix}-transaction-logs",
        }

    def step(server: Server, key: str) -> Row:
        if key in SOCKET_STEPS:
            socket_spec = SOCKET_STEPS[key]
            port = server.ports[socket_spec.port]
            return socket_row(
                server.row_name(socket_spec.name), socket_spec, lambda: socket_load(key, port), server, seconds
            )
        spec = STEPS[key]
        tls_port = server.ports[spec.listener] if spec.listener in server.tls else 0
        before = connections_to(tls_port) if tls_port else None
        row = drive(
            server.row_name(spec.name), server.url(spec.listener, spec.path), files[spec.body], spec.per_request,
            spec.hey_args(), seconds, server.sampler, content_type=spec.content_type, accepted=spec.accepted,
            metrics_url=server.metrics_url(spec.listener) if spec.metrics else "",
        )
        after = connections_to(tls_port) if tls_port else None
        if before is not None and after is not None:
            # Each connection is a full handshake: hey's client dials a new one whenever a request finds
            # none back in its pool yet, many more of them at 64 connections than at 16.
            opened = f"{len(after - before):,} connections opened (handshakes, warm-up included)"
            row.note = f"{row.note}; {opened}" if row.note else opened
        return row

    def start_gateway(
        stack: contextlib.ExitStack, label: str, root: Path, topic_prefix: str, with_sockets: bool = True, **env: str
    ) -> Server:
        """A gateway of every role (so every listener) with its own topics and PostgreSQL schema; with
        ``with_sockets``, the socket and OTLP/gRPC listeners the selected rows need, on free ports."""
        database_url = stack.enter_context(database_schema(services["DATABASE_URL"]))
        sockets = {name: free_port() for name in socket_ports} if with_sockets else {}
        ports, process = stack.enter_context(gateway_process(
            "transaction", root=root, **UNLIMITED, **topics(topic_prefix), DATABASE_URL=database_url,
            **{SOCKET_PORTS[name]: str(port) for name, port in sockets.items()}, **env,
        ))
        return Server({**ports, **sockets}, RssSampler(process.pid), label)

    def record(server: Server, key: str, row: Row) -> None:
        (based if server.label else rows)[key] = row

    with contextlib.ExitStack() as stack:
        bare: Server | None = None
        if {"bare", "bare_half"} & set(selected):
            port, process = stack.enter_context(bare_server())
            bare = Server({"bare": port}, RssSampler(process.pid))
        servers: list[Server] = []
        if set(GATEWAY_ORDER) & set(selected):
            for label, root, topic_prefix in trees:
                servers.append(start_gateway(stack, label, root, topic_prefix))
        # The same gateway in disk mode, its own process with topics of its own and a spool folder
        # removed once it has stopped. The folder is under .local, where the spool is kept by default
        # (the system's temporary directory may be a tmpfs, whose fsync costs nothing).
        disk_servers: list[Server] = []
        if DISK_ROWS & set(selected):
            for label, root, topic_prefix in trees:
                (ROOT / ".local").mkdir(exist_ok=True)
                spool = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=ROOT / ".local"))
                stack.callback(shutil.rmtree, spool, ignore_errors=True)
                disk_servers.append(start_gateway(
                    stack, label, root, f"{topic_prefix}-disk", with_sockets=False,
                    APPLICATION_DURABILITY="disk", SPOOL_DIR=str(spool),
                ))

        # The same gateway with TLS on the application listener, its own process with topics of its own;
        # the others stay plain, for its readiness and its /metrics.
        tls_servers: list[Server] = []
        if set(TLS_ROWS) & set(selected):
            certificate, private_key = self_signed(tmp)
            for label, root, topic_prefix in trees:
                served = start_gateway(
                    stack, label, root, f"{topic_prefix}-tls", with_sockets=False, TLS_CERT_FILE=str(certificate),
                    TLS_KEY_FILE=str(private_key), TLS_LISTENERS=",".join(TLS_LISTENERS), SYSLOG_TLS_PORT="0",
                )
                tls_servers.append(dataclasses.replace(served, tls=TLS_LISTENERS))

        def bare_step(server: Server) -> Row:
            return drive("bare ASGI on hypercorn-trio (ceiling)", server.url("bare", "/"), files["single"], 1,
                         SINGLE_CONNECTIONS, seconds, server.sampler)

        # Single events: bare hypercorn, this code's gateway and the baseline's, in turn.
        ceiling = functools.partial(bare_step, bare) if bare is not None and "bare" in selected else None
        singles = [functools.partial(step, server, "single") for server in servers] if "single" in selected else []
        if ceiling is not None or singles:
            base, measured = paired(ceiling, singles, PAIRED_ROUNDS if ceiling is not None and singles else 1)
            if base is not None:
                rows["bare"] = base
            for server, row in zip(servers, measured):
                record(server, "single", row)
        for key in GATEWAY_ORDER[1:]:
            if key not in selected:
                continue
            if key == "bare_half":
                # The HTTP layer's own tail under the same schedule: what the gateway's p99 compares with.
                assert bare is not None
                rows[key] = open_loop_row(
                    "bare ASGI on hypercorn-trio, open loop at the same rate", bare.ports["bare"], "/",
                    bodies["single"], rows["single"].rps / 2, seconds, connection_count(STEPS["single"]), bare.sampler.pid,
                )
                continue
            for server in disk_servers if key in DISK_ROWS else tls_servers if key in TLS_ROWS else servers:
                if key in OPEN_LOOPS:
                    name, closed = OPEN_LOOPS[key]
                    spec = STEPS[closed]
                    row = open_loop_row(
                        server.row_name(name), server.ports[spec.listener], spec.path, bodies[spec.body],
                        rows[closed].rps / 2, seconds, connection_count(spec), server.sampler.pid,
                    )
                else:
                    row = step(server, key)
                record(server, key, row)
    if set(WORKERS_ROWS) & set(selected):
        settle()
        with contextlib.ExitStack() as stack:
            servers = []
            for label, root, topic_prefix in trees:
                ports, process = stack.enter_context(gateway_process(
                    "application", "--no-postgres", args=["--role", "application", "--workers", "2"], root=root,
                    **UNLIMITED, **topics(topic_prefix),
                ))
                servers.append(Server(ports, RssSampler(process.pid), label))
            time.sleep(2)  # the second copies
            for key in WORKERS_ROWS:
                if key in selected:
                    for server in servers:
                        record(server, key, step(server, key))
    return rows, based


def connections_to(port: int) -> set[int] | None:
    """The local ports of this host's TCP connections to ``port`` still in the kernel's table (a closed
    one stays a minute in TIME_WAIT): what a run adds to it is the connections its client opened.
    None where the table cannot be read."""
    try:
        connections = psutil.net_connections("tcp")
    except (psutil.Error, OSError):
        return None
    return {int(c.laddr[1]) for c in connections if len(c.raddr) == 2 and c.raddr[1] == port and len(c.laddr) == 2}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (RSA 2048, as most deployments still have), made with openssl."""
    cert, key = directory / "tls.pem", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def connection_count(spec: Step) -> int:
    """How many connections ``hey`` keeps in a closed-loop step (its ``-c``)."""
    return int(spec.connections[spec.connections.index("-c") + 1])


def open_loop_row(
    name: str, port: int, path: str, body: bytes, rate: float, seconds: float, connections: int,
    pid: int | None = None,
) -> Row:
    """Requests on a fixed schedule (scripts/httpload.py), latency from the scheduled time: a slow
    answer cannot hide the ones it delays (no coordinated omission). They take turns on as many
    keep-alive connections as the closed-loop row that set the rate kept, as that many clients
    would. Measured OPEN_LOOP_RUNS times; the row is the run with the median p99 (and that run's
    CPU per event of the process tree of ``pid``), and its note gives every run's p99."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    request = request_bytes(f"127.0.0.1:{port}", path, body)
    # The closed-loop step before leaves work behind (the outbox relay publishing its backlog, the
    # kernel writing dirty pages back): let the machine settle, and warm the schedule up, first.
    settle()
    trio.run(open_loop, "127.0.0.1", port, request, rate, WARM_UP, connections)
    runs = []
    for _ in range(OPEN_LOOP_RUNS):
        cpu_before = tree_cpu_seconds(pid) if pid else math.nan
        answers = trio.run(open_loop, "127.0.0.1", port, request, rate, seconds, connections)
        cpu_after = tree_cpu_seconds(pid) if pid else math.nan
        accepted = sorted(answer.latency for answer in answers if answer.status == 202)
        p99 = accepted[min(len(accepted) - 1, int(len(accepted) * 0.99))] * 1000 if accepted else math.nan
        runs.append(Row(
            name, 1, len(answers) / seconds, len(accepted) / seconds, p99, len(answers) - len(accepted),
            cpu_us=per_event_us(cpu_before, cpu_after, len(accepted)),
        ))
    row = median_p99(runs)
    row.note = f"{rate:,.0f} requests/s offered on {connections} connections; p99 of the runs: " + ", ".join(f"{run.p99:.1f}" for run in runs) + " ms"
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


def assign_ratios(rows: dict[str, Row], of: dict[str, Row]) -> None:
    """The ratio column of the rows in ``of`` (this code's, or the baseline's) against this run's
    ceilings in ``rows``, the dialect and disk-mode rows against the native batch of 500 in ``of``;
    ``single`` has its own from the paired runs."""
    raw, bare, batch = rows.get("raw"), rows.get("bare"), of.get("batch500")
    if "single8080" in of and bare is not None:
        of["single8080"].ratio, of["single8080"].against = ratio(of["single8080"].rps, bare.rps), "bare hypercorn (median)"
    for key in ("batch100", "batch500", "otlp500", "tx100", "metrics100", "workers500"):
        if key in of and raw is not None:
            of[key].ratio, of[key].against = ratio(of[key].events, raw.events), "raw producer"
    if "workers" in of and "single" in of:
        of["workers"].ratio, of["workers"].against = ratio(of["workers"].rps, of["single"].rps), "one process, 8081"
    # Over TLS against the same row in plain HTTP, with the CPU per event's ratio too.
    for key, plain in TLS_ROWS.items():
        if key in of and plain in of:
            cpu = ratio(of[key].cpu_us, of[plain].cpu_us)
            of[key].ratio = ratio(of[key].events, of[plain].events)
            of[key].against = "plain HTTP" + ("" if math.isnan(cpu) else f", CPU µs/ev {cpu:.2f} x")
    # The dialects against the native batch route of the same gateway, disk mode against memory mode.
    for key in (*DIALECT_ROWS, "batch500_disk"):
        if key in of and batch is not None:
            of[key].ratio = ratio(of[key].events, batch.events)
            of[key].against = "memory mode" if key == "batch500_disk" else "native batch of 500"


def compare_with_baseline(rows: dict[str, Row], based: dict[str, Row]) -> None:
    """The ``vs baseline`` column: this code's CPU per event and events/s over the baseline's."""
    for key, then in based.items():
        if key in rows:
            rows[key].vs_cpu = ratio(rows[key].cpu_us, then.cpu_us)
            rows[key].vs_events = ratio(rows[key].events, then.events)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_note(*rows: tuple[str, Row | None]) -> str:
    """``; CPU µs/ev: batch 12.3, raw 3.1`` for those of ``rows`` with a CPU figure ('' for none)."""
    shown = [f"{what} {row.cpu_us:,.1f}" for what, row in rows if row is not None and not math.isnan(row.cpu_us)]
    return f"; CPU µs/ev: {', '.join(shown)}" if shown else ""


def targets(rows: dict[str, Row], selected: Collection[str] = ROW_KEYS) -> list[str]:
    """One line per target whose rows were selected, from the figures of this run; a missing figure
    fails its target."""
    missing = Row("missing")
    raw, bare = rows.get("raw", missing), rows.get("bare")
    single, batch500, workers = rows.get("single", missing), rows.get("batch500", missing), rows.get("workers", missing)
    bridge500 = rows.get("bridge500")
    gateway_rss = max(
        (row.rss_mb for key, row in rows.items() if key in BASELINE_ROWS and not math.isnan(row.rss_mb)), default=math.nan
    )
    lines = []

    def judge(needs: tuple[str, ...], ok: bool, text: str) -> None:
        if all(key in selected for key in needs):
            lines.append(f"{verdict(ok)}  {text}")

    judge(("batch500",), batch500.events >= 250_000,
          f"log batch of 500 >= 250,000 events/s ({batch500.events:,.0f}{cpu_note(('batch', batch500))})")
    judge(("batch500", "raw"), batch500.events >= 0.5 * raw.events,
          f"log batch of 500 >= 0.5 x raw producer of the same records ({ratio(batch500.events, raw.events):.2f} x"
          f"{cpu_note(('batch', batch500), ('raw', raw))})")
    judge(("single", "bare"), single.ratio >= 0.85,
          f"single on 8081 >= 0.85 x bare hypercorn ({single.ratio:.2f} x, median of {PAIRED_ROUNDS} paired runs"
          f"{cpu_note(('gateway', single), ('bare', bare))})")
    judge(("workers", "single"), workers.rps >= WORKERS_CLEARLY_MORE * single.rps,
          f"--workers 2 >= {WORKERS_CLEARLY_MORE} x one process ({ratio(workers.rps, single.rps):.2f} x"
          f"{cpu_note(('--workers 2', workers), ('one process', single))})")
    if bridge500 is not None and not math.isnan(bridge500.events):
        judge(("batch500", "bridge500"), batch500.events >= bridge500.events,
              f"log batch of 500 >= the bridge's 500-record batches ({ratio(batch500.events, bridge500.events):.2f} x"
              f"{cpu_note(('gateway', batch500), ('bridge', bridge500))})")
    else:
        judge(("batch500", "bridge500"), False, "log batch of 500 >= the bridge's 500-record batches (no bridge figure)")
    for key, what, limit in (("single_half", "single events", 15), ("tx1_half", "single transactions", 50)):
        row = rows.get(key, missing)
        beside = f"; bare hypercorn at the same rate {rows['bare_half'].p99:.1f} ms" if key == "single_half" and "bare_half" in rows else ""
        judge((key,), row.p99 < limit,
              f"{what} at half their maximum, open loop: p99 < {limit} ms "
              f"({row.p99:.1f} ms, median of {OPEN_LOOP_RUNS} runs{beside}{cpu_note(('gateway', row))})")
    batch500_disk, single_half = rows.get("batch500_disk", missing), rows.get("single_half", missing)
    single_half_disk = rows.get("single_half_disk", missing)
    judge(("batch500_disk", "batch500"), batch500_disk.events >= DISK_BATCH_SHARE * batch500.events,
          f"disk mode, log batch of 500 >= {DISK_BATCH_SHARE} x memory mode "
          f"({ratio(batch500_disk.events, batch500.events):.2f} x: {batch500_disk.events:,.0f} against "
          f"{batch500.events:,.0f}{cpu_note(('disk', batch500_disk), ('memory', batch500))})")
    judge(("single_half_disk", "single_half"), single_half_disk.p99 <= single_half.p99 + DISK_P99_MORE_MS,
          f"disk mode, single events open loop: p99 <= memory mode's + {DISK_P99_MORE_MS:g} ms at the same rate "
          f"({single_half_disk.p99:.1f} ms against {single_half.p99:.1f} ms, medians of {OPEN_LOOP_RUNS} runs"
          f"{cpu_note(('disk', single_half_disk), ('memory', single_half))})")
    if BASELINE_ROWS & set(selected):
        lines.append(f"{verdict(gateway_rss < 256)}  gateway peak RSS < 256 MB ({gateway_rss:.0f} MB, largest process)")
    return lines


def baseline_lines(rows: dict[str, Row], based: dict[str, Row], short: str) -> list[str]:
    """One line per row measured for the baseline too: this code's figure, the baseline's, their ratio."""
    def figures(what: str, now: float, then: float, spec: str) -> str:
        if math.isnan(now) and math.isnan(then):
            return ""
        shown = [format(value, spec) if not math.isnan(value) else "-" for value in (now, then)]
        times = ratio(now, then)
        return f"{what} {shown[0]} against {shown[1]}" + ("" if math.isnan(times) else f" ({times:.2f} x)")

    lines = [f"This code against {short} (this code's figure, then the baseline's):"]
    for key in ROW_KEYS:
        if key in rows and key in based:
            now, then = rows[key], based[key]
            parts = [
                figures("CPU µs/ev", now.cpu_us, then.cpu_us, ",.1f"),
                figures("events/s", now.events, then.events, ",.0f"),
                figures("p99 ms", now.p99, then.p99, ".1f"),
            ]
            lines.append(f"  {key:<12}" + "; ".join(part for part in parts if part))
    return lines


def print_table(rows: list[Row], baseline_column: bool = False) -> None:
    def number(value: float, spec: str) -> str:
        return "" if math.isnan(value) else format(value, spec)

    def versus(row: Row) -> str:
        if math.isnan(row.vs_cpu) and math.isnan(row.vs_events):
            return ""
        return f"{number(row.vs_cpu, '.2f') or '-'} / {number(row.vs_events, '.2f') or '-'}"

    header = (
        f"{'run':<44}{'ev/req':>7}{'req/s':>9}{'events/s':>11}{'CPU µs/ev':>10}"
        + (f"{'vs baseline':>13}" if baseline_column else "")
        + f"{'p99 ms':>9}{'errors':>8}{'RSS MB':>8}{'ratio':>7}  vs / note"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        against = row.against + (f"; {row.note}" if row.against and row.note else row.note)
        print(
            f"{row.name:<44}{row.per_request:>7}{number(row.rps, ',.0f'):>9}{number(row.events, ',.0f'):>11}"
            f"{number(row.cpu_us, ',.1f'):>10}" + (f"{versus(row):>13}" if baseline_column else "")
            + f"{number(row.p99, '.1f'):>9}{number(row.errors, '.0f'):>8}{number(row.rss_mb, '.0f'):>8}"
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
    parser.add_argument(
        "--only", metavar="ROWS",
        help=f"run only these rows (comma separated) and the rows they need: {', '.join(ROW_KEYS)}",
    )
    parser.add_argument(
        "--baseline", metavar="COMMIT",
        help="also measure the gateway rows of COMMIT, from a temporary git worktree, each right after this code's",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    try:
        selected = select_rows(args.only)
    except ValueError as error:
        parser.error(str(error))
    if args.baseline and not BASELINE_ROWS & set(selected):
        parser.error(f"--baseline measures gateway rows only ({', '.join(sorted(BASELINE_ROWS))}); none is selected")
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
    based: dict[str, Row] = {}
    codec: list[Row] = []
    with baseline_worktree(args.baseline) if args.baseline else contextlib.nullcontext() as baseline:
        try:
            with tempfile.TemporaryDirectory() as tmp_name:
                tmp = Path(tmp_name)
                raw_topic = f"{prefix}-raw"
                if {"raw", "raw_plain"} & set(selected):
                    create_topics(admin, [raw_topic])
                # The ceiling: the very records the gateway writes. For reference, the events' JSON alone.
                if "raw" in selected:
                    rows["raw"] = raw_producer(
                        "raw confluent-kafka producer (ceiling)", bootstrap, raw_topic, gateway_records(events), args.seconds
                    )
                if "raw_plain" in selected:
                    rows["raw_plain"] = raw_producer(
                        "raw producer, event JSON alone, no headers", bootstrap, raw_topic,
                        [(b"app-%d" % (i % 7), value, None) for i, value in enumerate(values)], args.seconds,
                    )
                gateway, based = gateway_rows(services, prefix, tmp, events, args.seconds, selected, baseline)
                rows.update(gateway)
                bridged = [key for key in BRIDGE_NAMES if key in selected]
                if bridged and not args.no_bridge:
                    rows.update(bridge_rows(args.bridge_lib, bootstrap, admin, prefix, tmp, events, args.seconds, bridged))
                if "codec" in selected:
                    codec = compression_rows(bootstrap, admin, prefix, values)
        finally:
            delete_topics(admin, prefix)

    assign_ratios(rows, rows)
    assign_ratios(rows, based)
    if "single" in rows and "bridge1" in rows and not math.isnan(rows["bridge1"].events):
        rows["bridge1"].ratio, rows["bridge1"].against = ratio(rows["single"].rps, rows["bridge1"].rps), "gateway single / this"
    if "batch500" in rows and "bridge500" in rows and not math.isnan(rows["bridge500"].events):
        rows["bridge500"].ratio = ratio(rows["batch500"].events, rows["bridge500"].events)
        rows["bridge500"].against = "gateway batch-500 / this"
    compare_with_baseline(rows, based)
    table = [row for key in ROW_KEYS for row in (rows.get(key), based.get(key)) if row is not None]
    print_table(table + codec, baseline_column=bool(based))
    if baseline is not None:
        print(f"(baseline rows: {baseline.short}, from a worktree of {baseline.commit}; vs baseline: "
              "CPU µs/ev / the baseline's, events/s / the baseline's)")
    print()
    for line in targets(rows, selected):
        print(line)
    if baseline is not None and based:
        print()
        for line in baseline_lines(rows, based, baseline.short):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
