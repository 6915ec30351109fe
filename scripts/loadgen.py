#!/usr/bin/env python3
"""Load generator for a running gateway, with an optional check that Kafka holds every accepted event.

Closed loop (``--concurrency N``: N clients, each sends its next request when the previous one
is answered) or open loop (``--rate R``: R requests a second on a fixed schedule, latency
measured from the scheduled send time, so queueing shows instead of being hidden by a client
that waits). Bounded by ``--duration`` or ``--requests``. A progress bar runs on stderr; the
summary tables go to stdout, ``--json`` writes them as a report, ``--plot`` draws latency over
time and its distribution (needs matplotlib: ``pip install -e '.[load]'``).

``--verify`` records the end offsets of the topics before the run, then reads them from there
(read_committed) and reports every accepted event id that is missing or that is there more
than once; the exit status is 1 when any is.

    scripts/loadgen.py --mode logs --concurrency 32 --requests 10000 --verify
    scripts/loadgen.py --mode batch --batch-size 100 --rate 50 --duration 30 --json run.json --plot run.png
    scripts/loadgen.py --mode mixed --mix logs=6,metrics=3,transactions=1 --rate 300 --duration 20 --verify
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from array import array
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_support import percentile  # noqa: E402
from scripts.httpload import TRANSPORT_ERRORS, Pool, request_bytes, send_times  # noqa: E402

# The streams, each with the topic the gateway writes it to by default.
DEFAULT_TOPICS = {"application": "application-logs", "infrastructure": "infrastructure-logs", "transaction": "transaction-logs"}
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
DEFAULT_MIX = "logs=70,batch=10,metrics=10,transactions=10"
# The status recorded for a request without an HTTP answer.
FAILED, TIMED_OUT = 0, 1
NO_ANSWER = {FAILED: "failed", TIMED_OUT: "timeout"}
LEVELS = ("INFO", "DEBUG", "WARN", "ERROR")


@dataclass(frozen=True)
class Kind:
    """One shape of request: its route, the stream its events land on, and whether it carries a batch."""

    path: str
    stream: str
    batch: bool
    list_field: str  # the batch body's field: {"logs": [...]}


KINDS = {
    "logs": Kind("/api/v1/logs", "application", False, "logs"),
    "batch": Kind("/api/v1/logs/batch", "application", True, "logs"),
    "metrics": Kind("/api/v1/metrics", "infrastructure", False, "metrics"),
    "metrics-batch": Kind("/api/v1/metrics/batch", "infrastructure", True, "metrics"),
    "transactions": Kind("/api/v1/transactions", "transaction", False, "transactions"),
    "transactions-batch": Kind("/api/v1/transactions/batch", "transaction", True, "transactions"),
}


def parse_mix(text: str) -> dict[str, float]:
    """``logs=70,metrics=30`` -> weights by kind."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or name not in KINDS:
            raise ValueError(f"{part!r}: expected KIND=WEIGHT with KIND one of {', '.join(KINDS)}")
        mix[name] = float(weight)
        if not (math.isfinite(mix[name]) and mix[name] >= 0):
            raise ValueError(f"{part!r}: a weight must be a number, 0 or more")
    if not any(mix.values()):
        raise ValueError("at least one weight must be above 0")
    return {name: weight for name, weight in mix.items() if weight > 0}


def latency_summary(latencies: Sequence[float]) -> dict[str, float] | None:
    """Exact percentiles, in milliseconds, of the latencies (seconds); None when there are none."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    summary: dict[str, float] = {"count": len(ordered), "mean": 1000 * sum(ordered) / len(ordered)}
    summary.update({name: 1000 * percentile(ordered, q) for name, q in QUANTILES.items()})
    summary["max"] = 1000 * ordered[-1]
    return summary


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Payloads:
    """The request bytes of each request: every event is distinct, every transaction has a key of its own."""

    def __init__(
        self, host: str, prefix: str, mix: Mapping[str, float], *, batch_size: int, ndjson: bool, api_key: str | None,
        run_id: str, seed: int | None,
    ) -> None:
        self._host = host
        self._prefix = prefix
        self._names = list(mix)
        self._weights = list(mix.values())
        self._batch_size = batch_size
        self._ndjson = ndjson
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._run_id = run_id
        self._random = random.Random(seed)

    def build(self, seq: int) -> tuple[Kind, bytes, int]:
        """Request number ``seq``: its kind, its bytes and how many events it carries."""
        name = self._names[0] if len(self._names) == 1 else self._random.choices(self._names, self._weights)[0]
        kind = KINDS[name]
        count = self._batch_size if kind.batch else 1
        items = [self._event(kind, seq, j) for j in range(count)]
        headers = dict(self._headers)
        content_type = "application/json"
        if not kind.batch:
            body = json.dumps(items[0], separators=(",", ":")).encode()
            if kind.stream == "transaction":
                headers["Idempotency-Key"] = f"loadgen-{self._run_id}-{seq}"
        elif self._ndjson and kind.stream != "transaction":  # the transaction batch route takes JSON only
            body = b"".join(json.dumps(item, separators=(",", ":")).encode() + b"\n" for item in items)
            content_type = "application/x-ndjson"
        else:
            body = json.dumps({kind.list_field: items}, separators=(",", ":")).encode()
        return kind, request_bytes(self._host, self._prefix + kind.path, body, content_type, headers), count

    def _event(self, kind: Kind, seq: int, j: int) -> dict[str, Any]:
        n = seq + j
        label = f"loadgen {self._run_id} request {seq} event {j}"
        if kind.stream == "application":
            return {
                "source": f"loadgen-{n % 8}", "level": LEVELS[n % len(LEVELS)], "message": label,
                "attributes": {"run": self._run_id, "request": seq},
            }
        if kind.stream == "infrastructure":
            return {
                "host": f"loadgen-{n % 8}", "metric": "cpu.utilization", "value": round(self._random.uniform(0, 100), 2),
                "unit": "percent", "labels": {"run": self._run_id}, "timestamp": now_iso(),
            }
        transaction = {"userId": f"user-{n % 100}", "type": "PAYMENT", "amount": "19.99", "currency": "USD", "description": label}
        if kind.batch:
            transaction["idempotencyKey"] = f"loadgen-{self._run_id}-{seq}-{j}"
        return transaction


@dataclass
class Results:
    """Every request's send time, latency and status, kept compactly in arrays; the accepted event ids by stream."""

    sent: array[float] = field(default_factory=lambda: array("d"))  # seconds from the start (open loop: scheduled)
    latency: array[float] = field(default_factory=lambda: array("d"))  # seconds
    status: array[int] = field(default_factory=lambda: array("H"))
    statuses: Counter[int] = field(default_factory=Counter)
    events_sent: int = 0
    events_accepted: int = 0
    accepted: dict[str, list[str]] = field(default_factory=dict)
    unreadable: int = 0  # 2xx answers without event ids
    issued: int = 0
    max_lag: float = 0.0  # open loop: the latest a request left after its scheduled time

    def record(self, kind: Kind, sent: float, latency: float, status: int, events: int, body: bytes) -> None:
        self.sent.append(sent)
        self.latency.append(latency)
        self.status.append(status)
        self.statuses[status] += 1
        self.events_sent += events
        if 200 <= status < 300:
            ids = event_ids(body)
            if not ids:
                self.unreadable += 1
            self.accepted.setdefault(kind.stream, []).extend(ids)
            self.events_accepted += len(ids)

    @property
    def answered(self) -> int:
        return len(self.status)


def event_ids(body: bytes) -> list[str]:
    """The ids in an accepted answer: ``{"eventId": ...}`` or ``{"eventIds": [...]}``."""
    try:
        answer = json.loads(body)
    except ValueError:
        return []
    if not isinstance(answer, dict):
        return []
    if isinstance(answer.get("eventIds"), list):
        return [str(i) for i in answer["eventIds"]]
    return [str(answer["eventId"])] if "eventId" in answer else []


@dataclass
class Plan:
    """What to send, where, how fast and how much."""

    host: str
    port: int
    payloads: Payloads
    concurrency: int | None  # closed loop
    rate: float | None  # open loop
    requests: int | None
    duration: float | None
    timeout: float
    max_connections: int
    progress: bool
    run_id: str

    @property
    def total_requests(self) -> int | None:
        if self.requests is not None:
            return self.requests
        return max(1, int(self.rate * self.duration)) if self.rate and self.duration else None


async def exchange(pool: Pool, request: bytes, timeout: float) -> tuple[int, bytes]:
    with trio.move_on_after(timeout):
        try:
            reply = await pool.exchange(request)
        except TRANSPORT_ERRORS:
            return FAILED, b""
        return reply.status, reply.body
    return TIMED_OUT, b""


async def closed_loop(plan: Plan, results: Results, start: float, stop: trio.Event) -> None:
    """``concurrency`` clients, each on its own connection, each waiting for its answer before the next request."""
    deadline = start + plan.duration if plan.duration is not None else math.inf

    def take() -> int | None:
        if stop.is_set() or trio.current_time() >= deadline or (plan.requests is not None and results.issued >= plan.requests):
            return None
        results.issued += 1
        return results.issued - 1

    async def client() -> None:
        pool = Pool(plan.host, plan.port)
        try:
            while (seq := take()) is not None:
                kind, request, events = plan.payloads.build(seq)
                sent = trio.current_time()
                status, body = await exchange(pool, request, plan.timeout)
                results.record(kind, sent - start, trio.current_time() - sent, status, events, body)
        finally:
            await pool.aclose()

    assert plan.concurrency is not None
    async with trio.open_nursery() as nursery:
        for _ in range(plan.concurrency):
            nursery.start_soon(client)


async def open_loop(plan: Plan, results: Results, start: float, stop: trio.Event) -> None:
    """``rate`` requests a second on a fixed schedule, whatever the answers; latency counts from the schedule."""
    assert plan.rate is not None and plan.total_requests is not None
    pool = Pool(plan.host, plan.port)
    connections = trio.CapacityLimiter(plan.max_connections)

    async def one(seq: int, scheduled: float) -> None:
        kind, request, events = plan.payloads.build(seq)
        async with connections:  # waiting here is queueing, and counts in the latency
            status, body = await exchange(pool, request, plan.timeout)
        results.record(kind, scheduled, trio.current_time() - start - scheduled, status, events, body)

    try:
        async with trio.open_nursery() as nursery:
            for seq, scheduled in enumerate(send_times(plan.rate, plan.total_requests)):
                await trio.sleep_until(start + scheduled)
                if stop.is_set():
                    break
                results.max_lag = max(results.max_lag, trio.current_time() - start - scheduled)
                results.issued += 1
                nursery.start_soon(one, seq, scheduled)
    finally:
        await pool.aclose()


async def show_progress(plan: Plan, results: Results, start: float) -> None:
    """A progress bar on stderr, by requests when their number is known, by time otherwise."""
    total = plan.total_requests
    by_time = total is None
    with Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=24), TaskProgressColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"), console=Console(stderr=True), auto_refresh=False,
    ) as progress:
        task = progress.add_task("seconds" if by_time else "requests", total=plan.duration if by_time else total, detail="")

        def update() -> None:
            elapsed = trio.current_time() - start
            ok = sum(n for status, n in results.statuses.items() if 200 <= status < 300)
            refused = results.answered - ok - results.statuses[FAILED] - results.statuses[TIMED_OUT]
            detail = (
                f"{ok:,} 2xx  {refused:,} refused  {results.statuses[FAILED] + results.statuses[TIMED_OUT]:,} failed  "
                f"{results.answered / elapsed if elapsed > 0 else 0:,.0f} req/s"
            )
            completed = min(elapsed, plan.duration or 0) if by_time else results.answered
            progress.update(task, completed=completed, detail=detail, refresh=True)

        try:
            while True:
                update()
                await trio.sleep(0.1)
        finally:
            update()


async def stop_on_interrupt(stop: trio.Event) -> None:
    """Ctrl-C ends the sending; the requests in flight are answered (or time out) and the report is printed."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()


async def run_load(plan: Plan) -> tuple[Results, float]:
    """Run the plan; the results and the seconds from the first request to the last answer."""
    results = Results()
    stop = trio.Event()
    async with trio.open_nursery() as watchers:
        if threading.current_thread() is threading.main_thread():
            watchers.start_soon(stop_on_interrupt, stop)
        start = trio.current_time()
        if plan.progress:
            watchers.start_soon(show_progress, plan, results, start)
        await (closed_loop if plan.concurrency is not None else open_loop)(plan, results, start, stop)
        elapsed = trio.current_time() - start
        watchers.cancel_scope.cancel()
    return results, elapsed


def summarize(args: argparse.Namespace, plan: Plan, results: Results, elapsed: float) -> dict[str, Any]:
    """The run as plain data: what the tables show and ``--json`` writes."""
    answered = [latency for latency, status in zip(results.latency, results.status) if status not in NO_ANSWER]
    ok = [latency for latency, status in zip(results.latency, results.status) if 200 <= status < 300]
    failed = results.statuses[FAILED] + results.statuses[TIMED_OUT]
    return {
        "run_id": plan.run_id,
        "url": args.url,
        "mode": args.mode,
        "mix": args.weights,
        "loop": "closed" if plan.concurrency is not None else "open",
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "batch_size": args.batch_size,
        "elapsed_seconds": elapsed,
        "requests": {
            "sent": results.issued,
            "answered": len(answered),
            "ok": len(ok),
            "failed": failed,
            "ok_without_event_ids": results.unreadable,
        },
        "status": {NO_ANSWER.get(status, str(status)): n for status, n in sorted(results.statuses.items())},
        "events": {"sent": results.events_sent, "accepted": results.events_accepted},
        "throughput": {
            "requests_per_second": len(answered) / elapsed if elapsed > 0 else 0.0,
            "events_per_second": results.events_accepted / elapsed if elapsed > 0 else 0.0,
        },
        "latency_ms": {"all": latency_summary(answered), "ok": latency_summary(ok)},
        "client_lag_ms": 1000 * results.max_lag if plan.rate is not None else None,
    }


# -- verification ------------------------------------------------------------------------


def _consumer(bootstrap: str) -> confluent_kafka.Consumer:
    # librdkafka logs every failed connection attempt; a failure that matters surfaces as an exception.
    quiet = logging.getLogger("loadgen.librdkafka")
    quiet.setLevel(logging.CRITICAL)
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"loadgen-verify-{uuid.uuid4().hex}",  # never joined (partitions are assigned), never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        },
        logger=quiet,
    )


def _partitions(consumer: confluent_kafka.Consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:  # not created yet
        return []
    return sorted(metadata.partitions)


def _end_offsets(consumer: confluent_kafka.Consumer, topic: str, timeout: float) -> dict[int, int]:
    ends: dict[int, int] = {}
    for partition in _partitions(consumer, topic, timeout):
        marks = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, partition), timeout=timeout, cached=False)
        if marks is None:
            raise RuntimeError(f"no end offset for {topic} [{partition}] within {timeout} s")
        ends[partition] = marks[1]
    return ends


def mark_topics(bootstrap: str, topics: Collection[str], timeout: float = 10.0) -> dict[str, dict[int, int]]:
    """The end offset of every partition of ``topics``, by topic: where the run's records will begin."""
    consumer = _consumer(bootstrap)
    try:
        return {topic: _end_offsets(consumer, topic, timeout) for topic in topics}
    finally:
        consumer.close()


@dataclass
class TopicCheck:
    """What one topic holds of the accepted events, from the offsets marked before the run."""

    topic: str
    accepted: int
    found: int
    missing: list[str]
    duplicated: dict[str, int]  # event id -> times found
    mismatched: int  # records whose event-id header and eventId field differ
    other: int  # records of other producers, or of requests whose answer never came
    caught_up: bool  # read to the end of every partition after the last accepted event was found

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated and not self.mismatched


def verify(
    bootstrap: str, starts: Mapping[str, Mapping[int, int]], expected: Mapping[str, Collection[str]], timeout: float
) -> dict[str, TopicCheck]:
    """Read every topic from its marked offsets until each accepted id is found and the partitions are read to
    their end, or ``timeout`` passes; count what is missing and what is there twice."""
    deadline = time.monotonic() + timeout
    wanted = {topic: set(expected.get(topic, ())) for topic in starts}
    seen: dict[str, Counter[str]] = {topic: Counter() for topic in starts}
    mismatched: Counter[str] = Counter()
    other: Counter[str] = Counter()
    remaining = sum(len(ids) for ids in wanted.values())
    consumer = _consumer(bootstrap)
    try:
        assignment = [
            confluent_kafka.TopicPartition(topic, partition, start.get(partition, confluent_kafka.OFFSET_BEGINNING))
            for topic, start in starts.items()
            for partition in _partitions(consumer, topic, 10.0)
        ]
        consumer.assign(assignment)
        reached: dict[tuple[str, int], int] = {}  # the offset each partition was read to
        targets: dict[tuple[str, int], int] | None = None
        caught_up = False
        while time.monotonic() < deadline:
            if targets is None and remaining == 0:
                # Where the partitions end now. Asked of a consumer of its own: this one's fetches would delay the answer.
                ends = mark_topics(bootstrap, list(starts))
                targets = {(topic, partition): end for topic in ends for partition, end in ends[topic].items()}
            if targets is not None and all(reached.get(tp, -1) >= end for tp, end in targets.items()):
                caught_up = True
                break
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                topic, partition, offset, error = message.topic(), message.partition(), message.offset(), message.error()
                assert topic is not None and partition is not None and offset is not None
                if error is not None:
                    if error.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {error}")
                    reached[(topic, partition)] = offset
                    continue
                reached[(topic, partition)] = offset + 1
                header = dict(message.headers() or []).get("event-id")
                event_id = header.decode(errors="replace") if isinstance(header, bytes) else header
                if event_id is None or event_id not in wanted[topic]:
                    other[topic] += 1
                    continue
                try:
                    value_id = json.loads(message.value() or b"").get("eventId")
                except (ValueError, AttributeError):
                    value_id = None
                if value_id != event_id:
                    mismatched[topic] += 1
                seen[topic][event_id] += 1
                if seen[topic][event_id] == 1:
                    remaining -= 1
    finally:
        consumer.close()
    return {
        topic: TopicCheck(
            topic=topic,
            accepted=len(wanted[topic]),
            found=len(seen[topic]),
            missing=sorted(wanted[topic] - seen[topic].keys()),
            duplicated={i: n for i, n in seen[topic].items() if n > 1},
            mismatched=mismatched[topic],
            other=other[topic],
            caught_up=caught_up,
        )
        for topic in starts
    }


def verification_report(checks: Mapping[str, TopicCheck], streams: Mapping[str, str], listed: int = 20) -> dict[str, Any]:
    by_topic = {topic: [s for s, t in streams.items() if t == topic] for topic in checks}
    return {
        "ok": all(check.ok for check in checks.values()),
        "topics": {
            topic: {
                "streams": by_topic[topic],
                "accepted": check.accepted,
                "found": check.found,
                "missing": len(check.missing),
                "duplicated": len(check.duplicated),
                "mismatched": check.mismatched,
                "other_records": check.other,
                "caught_up": check.caught_up,
                "missing_ids": check.missing[:listed],
                "duplicated_ids": dict(list(check.duplicated.items())[:listed]),
            }
            for topic, check in checks.items()
        },
    }


# -- output ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_tables(report: Mapping[str, Any], console: Console) -> None:
    loop = f"{report['concurrency']} clients" if report["loop"] == "closed" else f"{report['rate']:g} req/s offered"
    requests, events = report["requests"], report["events"]
    throughput = Table(title=f"{report['mode']}, {report['loop']} loop ({loop}), {report['elapsed_seconds']:.1f} s")
    for column in ("requests", "answered", "2xx", "failed", "req/s", "events sent", "events accepted", "events/s"):
        throughput.add_column(column, justify="right")
    throughput.add_row(
        f"{requests['sent']:,}", f"{requests['answered']:,}", f"{requests['ok']:,}", f"{requests['failed']:,}",
        f"{report['throughput']['requests_per_second']:,.1f}", f"{events['sent']:,}", f"{events['accepted']:,}",
        f"{report['throughput']['events_per_second']:,.1f}",
    )
    console.print(throughput)

    latency = Table(title="latency, ms" + ("" if report["loop"] == "closed" else " (from the scheduled send time)"))
    latency.add_column("answers")
    for column in ("count", *QUANTILES, "max", "mean"):
        latency.add_column(column, justify="right")
    for name, label in (("all", "all"), ("ok", "2xx")):
        summary = report["latency_ms"][name]
        if summary is None:
            latency.add_row(label, "0", *["-"] * (len(QUANTILES) + 2))
        else:
            latency.add_row(
                label, f"{summary['count']:,.0f}", *[_ms(summary[q]) for q in QUANTILES], _ms(summary["max"]), _ms(summary["mean"])
            )
    console.print(latency)
    if report["client_lag_ms"] is not None and report["client_lag_ms"] > 100:
        console.print(f"[yellow]the client sent up to {report['client_lag_ms']:,.0f} ms late: it was the bottleneck[/]")

    statuses = Table(title="answers")
    statuses.add_column("status")
    statuses.add_column("count", justify="right")
    statuses.add_column("share", justify="right")
    total = max(1, sum(report["status"].values()))
    for status, n in report["status"].items():
        statuses.add_row(status, f"{n:,}", f"{100 * n / total:.1f}%")
    console.print(statuses)
    if requests["ok_without_event_ids"]:
        console.print(f"[red]{requests['ok_without_event_ids']} accepted answers named no event id[/]")

    if "verify" in report and "error" in report["verify"]:
        console.print(f"[red]the topics could not be read back: {report['verify']['error']}[/]")
    elif "verify" in report:
        check = Table(title="Kafka: accepted events, read back")
        check.add_column("topic")
        for column in ("accepted", "found", "missing", "duplicated", "mismatched", "other records"):
            check.add_column(column, justify="right")
        check.add_column("result")
        for topic, row in report["verify"]["topics"].items():
            good = row["missing"] == 0 and row["duplicated"] == 0 and row["mismatched"] == 0
            result = "[green]OK[/]" if good else "[red]FAIL[/]"
            if good and not row["caught_up"]:
                result += " (not read to the end in time)"
            check.add_row(
                topic, *(f"{row[c]:,}" for c in ("accepted", "found", "missing", "duplicated", "mismatched", "other_records")), result
            )
        console.print(check)
        for topic, row in report["verify"]["topics"].items():
            if row["missing_ids"]:
                console.print(f"missing from {topic} ({len(row['missing_ids'])} of {row['missing']:,} listed):")
                console.print(*row["missing_ids"])
            if row["duplicated_ids"]:
                console.print(f"duplicated in {topic} ({len(row['duplicated_ids'])} of {row['duplicated']:,} listed), times found:")
                console.print(*(f"{i} {n}" for i, n in row["duplicated_ids"].items()))


def plot(results: Results, report: Mapping[str, Any], path: str) -> None:
    """Latency over the run and its distribution, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    fig, (over_time, spread) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    groups = {"2xx": (200, 300, "tab:green"), "4xx": (400, 500, "tab:orange"), "5xx": (500, 600, "tab:red")}
    for label, (floor, ceiling, colour) in groups.items():
        points = [(s, 1000 * lat) for s, lat, st in zip(results.sent, results.latency, results.status) if floor <= st < ceiling]
        if points:
            xs, ys = zip(*points)
            over_time.scatter(xs, ys, s=3, alpha=0.5, color=colour, label=label, linewidths=0)
    over_time.set_yscale("log")
    over_time.yaxis.set_major_formatter(plain)
    over_time.yaxis.set_minor_formatter(plain)
    over_time.set_xlabel("seconds from the start" + (" (scheduled send time)" if report["loop"] == "open" else ""))
    over_time.set_ylabel("latency, ms")
    over_time.set_title("latency over time")
    if over_time.get_legend_handles_labels()[0]:
        over_time.legend(markerscale=4)

    answered = [1000 * lat for lat, st in zip(results.latency, results.status) if st not in NO_ANSWER]
    if answered:
        low, high = max(min(answered), 1e-3), max(answered)
        bins: list[float] | int = [low * (high / low) ** (i / 60) for i in range(61)] if high > low else 10
        spread.hist(answered, bins=bins, color="tab:blue")
        spread.set_xscale("log")
        spread.xaxis.set_major_formatter(plain)
        spread.xaxis.set_minor_formatter(plain)
        summary = report["latency_ms"]["all"]
        for name, style in (("p50", ":"), ("p99", "--"), ("p99.9", "-.")):
            spread.axvline(summary[name], color="black", linestyle=style, label=f"{name} {summary[name]:,.1f} ms")
        spread.legend()
    spread.set_xlabel("latency, ms")
    spread.set_ylabel("answers")
    spread.set_title("latency distribution")
    fig.suptitle(f"{report['mode']}, {report['loop']} loop, {report['requests']['answered']:,} answers")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default %(default)s)")
    parser.add_argument("--mode", choices=[*KINDS, "mixed"], default="logs", help="what to send (default %(default)s)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="mixed mode: KIND=WEIGHT,... (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request (default %(default)s)")
    parser.add_argument("--ndjson", action="store_true", help="send log and metric batches as NDJSON")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=int, help="closed loop: this many clients (the default, with 16)")
    loop.add_argument("--rate", type=float, help="open loop: this many requests a second on a fixed schedule")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, help="seconds to send for (the default, with 10)")
    bound.add_argument("--requests", type=int, help="requests to send")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one request may take (default %(default)s)")
    parser.add_argument("--max-connections", type=int, default=256, help="open loop: most connections (default %(default)s)")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    parser.add_argument("--seed", type=int, help="seed of the mixed mode's choices and of the metric values")
    parser.add_argument("--verify", action="store_true", help="read the topics back: every accepted event exactly once")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers for --verify (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--topic", action="append", default=[], metavar="[STREAM=]TOPIC",
        help="topic to verify: STREAM is application, infrastructure or transaction; a bare TOPIC is the mode's one "
        f"stream (defaults: {', '.join(f'{s}={t}' for s, t in DEFAULT_TOPICS.items())})",
    )
    parser.add_argument("--verify-timeout", type=float, default=30.0, help="seconds to wait for the events (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw latency over time and its distribution (PNG; needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.concurrency is None and args.rate is None:
        args.concurrency = 16
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    problems = [
        message
        for bad, message in (
            (args.concurrency is not None and args.concurrency < 1, "--concurrency must be 1 or more"),
            (args.rate is not None and not args.rate > 0, "--rate must be above 0"),
            (args.duration is not None and not args.duration > 0, "--duration must be above 0"),
            (args.requests is not None and args.requests < 1, "--requests must be 1 or more"),
            (args.batch_size < 1, "--batch-size must be 1 or more"),
            (not args.timeout > 0, "--timeout must be above 0"),
            (args.max_connections < 1, "--max-connections must be 1 or more"),
            (args.plot and importlib.util.find_spec("matplotlib") is None, "--plot needs matplotlib: pip install -e '.[load]'"),
        )
        if bad
    ]
    try:
        args.weights = parse_mix(args.mix) if args.mode == "mixed" else {args.mode: 1.0}
        args.streams = topics_for(args.weights, args.topic)
    except ValueError as error:
        problems.append(str(error))
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        problems.append(f"--url {args.url}: only http://HOST[:PORT] is supported")
    if problems:
        parser.error("; ".join(problems))
    return args


def topics_for(weights: Mapping[str, float], overrides: Sequence[str]) -> dict[str, str]:
    """The topic of each stream the mix sends to: the default, or as ``--topic`` names it.

    ``STREAM=TOPIC`` for a stream the mix does not send to is taken and ignored, so one set of
    flags serves every mode."""
    streams = {KINDS[name].stream: DEFAULT_TOPICS[KINDS[name].stream] for name in weights}
    for override in overrides:
        stream, sep, topic = override.partition("=")
        if not sep:
            if len(streams) != 1:
                raise ValueError(f"--topic {override}: this mode sends to {len(streams)} streams; name each as STREAM=TOPIC")
            stream, topic = next(iter(streams)), override
        if stream not in DEFAULT_TOPICS or not topic:
            raise ValueError(f"--topic {override}: expected TOPIC or STREAM=TOPIC, STREAM one of {', '.join(DEFAULT_TOPICS)}")
        if stream in streams:
            streams[stream] = topic
    return streams


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    run_id = uuid.uuid4().hex[:12]
    payloads = Payloads(
        url.netloc, url.path.rstrip("/"), args.weights, batch_size=args.batch_size, ndjson=args.ndjson,
        api_key=args.api_key, run_id=run_id, seed=args.seed,
    )
    plan = Plan(
        host=url.hostname or "", port=url.port or 80, payloads=payloads, concurrency=args.concurrency, rate=args.rate,
        requests=args.requests, duration=args.duration, timeout=args.timeout, max_connections=args.max_connections,
        progress=not args.no_progress, run_id=run_id,
    )
    errors = Console(stderr=True)
    topics = sorted(set(args.streams.values()))
    try:
        starts = mark_topics(args.bootstrap, topics) if args.verify else {}
    except (confluent_kafka.KafkaException, RuntimeError) as error:
        errors.print(f"[red]--verify: no end offsets of {', '.join(topics)} from {args.bootstrap}: {error}[/]")
        return 2
    results, elapsed = trio.run(run_load, plan)
    report = summarize(args, plan, results, elapsed)
    if args.verify:
        expected: dict[str, list[str]] = {topic: [] for topic in topics}
        for stream, ids in results.accepted.items():
            expected[args.streams[stream]].extend(ids)
        errors.print(f"reading {', '.join(topics)} back from {args.bootstrap} ...")
        try:
            report["verify"] = verification_report(verify(args.bootstrap, starts, expected, args.verify_timeout), args.streams)
        except (confluent_kafka.KafkaException, RuntimeError) as error:
            report["verify"] = {"ok": False, "error": str(error), "topics": {}}
    print_tables(report, Console(width=None if sys.stdout.isatty() else 160))  # a file gets whole rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(results, report, args.plot)
    return 0 if report.get("verify", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
