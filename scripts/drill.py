#!/usr/bin/env python3
"""Failure drills: the reference design's failure scenarios played on a local stack of the drill's own.

    make drill                      # or: .venv/bin/python scripts/drill.py [--only broker-down,partition] [--keep]

For each scenario it prints what a user should see and what was seen, PASS or FAIL, and exits 1 when
anything failed:

- broker-down: the broker stops (as ``docker compose stop kafka``): the breaker opens
  (``/actuator/metrics/producer.circuit.breaker``), requests answer 503 with Retry-After, ``/ready`` 503;
  after the restart the breaker closes and every event answered 202 is in Kafka.
- partition: the broker stops answering (SIGSTOP: its connections stay open, nothing comes back): the
  buffer fills, then 503 ``buffer full`` propagates the backpressure; after SIGCONT it drains, nothing lost.
- crash: the gateway is killed (SIGKILL) under logs and transactions: logs still in its buffer are lost
  (as the reference design documents for logs), transactions are replayed from the outbox, each exactly once.
- overload: more than the rate limit: 429 with Retry-After, and ``producer_throttled_total`` rises by
  exactly the events refused (the reference design's ``rate(producer_throttled_total[1m])``).

The stack is the drill's own, never the shared one: ``scripts/infra.py`` with ``INFRA_DIR`` (default
``.local/drill``), ``KAFKA_PORT_BASE`` (19392) and ``PG_PORT`` (19433), all on 127.0.0.1; it is stopped at the
end unless ``--keep``. Each drill has a deadline; the gateways' logs are kept under ``$INFRA_DIR/drill-logs``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx
import psycopg
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import localinfra  # noqa: E402
from scripts.localinfra.settings import Settings as InfraSettings  # noqa: E402

DEFAULT_INFRA_DIR = ROOT / ".local" / "drill"
DEFAULT_KAFKA_PORT_BASE = "19392"
DEFAULT_PG_PORT = "19433"
DRILL_SECONDS = 120  # the longest one drill may take
DRILLS = ("broker-down", "partition", "crash", "overload")
READY_LISTENERS = ("application", "transaction")


@dataclasses.dataclass
class Check:
    expected: str
    seen: str
    ok: bool


class Drill:
    """One scenario's checks, printed as they are made."""

    def __init__(self, name: str, title: str, reference: str) -> None:
        self.name = name
        self.checks: list[Check] = []
        print(f"\n== {title}", flush=True)
        if reference:
            print(f"   reference design: {reference}", flush=True)

    def check(self, expected: str, seen: str, ok: bool) -> bool:
        self.checks.append(Check(expected, seen, ok))
        print(f"   {'PASS' if ok else 'FAIL'}  {expected}\n         seen: {seen}", flush=True)
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)


# -- the stack --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    infra: InfraSettings
    bootstrap_servers: str
    database_url: str
    logs: Path

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Stack:
        infra = InfraSettings.from_env(env)
        return cls(infra, "", "", infra.infra_dir / "drill-logs")

    def up(self) -> None:
        served = localinfra.up(kafka_nodes=1, prometheus=False, s=self.infra)
        self.bootstrap_servers = served["KAFKA_BOOTSTRAP_SERVERS"]
        self.database_url = served["DATABASE_URL"]
        for address in self.bootstrap_servers.split(","):
            if not address.startswith("127.0.0.1:"):
                raise SystemExit(f"drill: refusing a broker that is not on 127.0.0.1: {address}")
        self.logs.mkdir(parents=True, exist_ok=True)

    def stop_broker(self) -> None:
        localinfra.down(kafka_nodes="1", postgres=False, prometheus=False, s=self.infra)

    def start_broker(self) -> None:
        localinfra.up(kafka_nodes=1, postgres=False, prometheus=False, s=self.infra)

    def broker_pid(self) -> int:
        pid = localinfra.broker_pid(1, mode=1, s=self.infra)
        if pid is None:
            raise RuntimeError("the drill's broker is not running")
        return pid

    def down(self) -> None:
        localinfra.down(kafka_nodes="all", prometheus=False, s=self.infra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """``python -m app`` with the drill's settings, on free ports of 127.0.0.1."""

    def __init__(self, stack: Stack, name: str, env: dict[str, str], schema: str) -> None:
        self.ports = {role: free_port() for role in ("gateway", "application", "infrastructure", "transaction")}
        suffix = uuid.uuid4().hex[:8]
        self.topics = {
            "application": f"drill-{name}-application-{suffix}",
            "infrastructure": f"drill-{name}-infrastructure-{suffix}",
            "transaction": f"drill-{name}-transaction-{suffix}",
        }
        separator = "&" if "?" in stack.database_url else "?"
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            **{f"{role.upper()}_PORT": str(port) for role, port in self.ports.items()},
            **{f"{stream.upper()}_TOPIC": topic for stream, topic in self.topics.items()},
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
            "DATABASE_URL": f"{stack.database_url}{separator}options=-csearch_path%3D{schema}",
            "SYSLOG_PORT": "0",
            "FORWARD_PORT": "0",
            "OTLP_GRPC_PORT": "0",
            "COLLECTOR_INTERVAL": "0",
            "LAG_INTERVAL": "0",
            "OUTBOX_POLL_INTERVAL": "0.2",
            "GRACEFUL_TIMEOUT": "2",
            "FLUSH_TIMEOUT": "10",
            "LOG_FORMAT": "text",
            **env,
        }
        self.log_path = stack.logs / f"{name}-{suffix}.log"
        self.process: trio.Process | None = None

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "app"], env=self.env, cwd=str(ROOT), stdout=log, stderr=log
            )
        async with httpx.AsyncClient(timeout=2) as client:
            with trio.fail_after(60):
                while True:
                    try:
                        answers = [await client.get(f"{self.url(name)}/ready") for name in READY_LISTENERS]
                        if all(answer.status_code == 200 for answer in answers):
                            return
                    except httpx.TransportError:
                        pass
                    if self.process.returncode is not None:
                        raise RuntimeError(f"the gateway exited with {self.process.returncode}; see {self.log_path}")
                    await trio.sleep(0.2)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await self.process.wait()
            await self.kill()


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    await gateway.start()
    try:
        yield gateway
    finally:
        with trio.CancelScope(shield=True):
            await gateway.stop()


# -- what the drills read -----------------------------------------------------------------------------------------


async def metric(client: httpx.AsyncClient, url: str, name: str, **tags: str) -> dict[str, float]:
    """The measurements of an actuator metric, as the reference design's runbook reads it."""
    params = tuple(("tag", f"{key}:{value}") for key, value in tags.items())
    answer = await client.get(f"{url}/actuator/metrics/{name}", params=params)
    answer.raise_for_status()
    return {m["statistic"]: float(m["value"]) for m in answer.json()["measurements"]}


async def breaker(client: httpx.AsyncClient, url: str) -> float | None:
    return (await metric(client, url, "producer.circuit.breaker")).get("VALUE")


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.2) -> float | None:
    """Seconds until ``predicate`` held, or None when it did not within ``timeout``."""
    started = time.monotonic()
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(every)
        return time.monotonic() - started
    return None


def read_event_ids(
    bootstrap: str, topic: str, expected: set[str], timeout: float, settle: float = 1.0
) -> collections.Counter[str]:
    """How many times each event id is in ``topic`` (read_committed, from the beginning), once ``expected``
    are all there (or the timeout passed), and ``settle`` seconds more for duplicates to show."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drill-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    seen: collections.Counter[str] = collections.Counter()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        settled_at: float | None = None
        while time.monotonic() < deadline and (settled_at is None or time.monotonic() < settled_at):
            if settled_at is None and expected <= set(seen):
                settled_at = time.monotonic() + settle
            for message in consumer.consume(num_messages=5000, timeout=0.2):
                if message.error() is None:
                    event_id = dict(message.headers() or []).get("event-id")
                    if isinstance(event_id, bytes):  # consumed headers' values are bytes
                        seen[event_id.decode()] += 1
    finally:
        consumer.close()
    return seen


class LogStream:
    """Clients posting single logs, each waiting for its answer: what each answer was, and the ids accepted."""

    def __init__(self, url: str, workers: int = 4, pace: float = 0.0) -> None:
        self.url = url
        self.workers = workers
        self.pace = pace
        self.accepted: list[str] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()  # error names of 503/429s
        self.without_retry_after = 0
        self.unanswered = 0
        self._stop = trio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            async with trio.open_nursery() as nursery:
                for worker in range(self.workers):
                    nursery.start_soon(self._worker, client, worker)

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                log = {"source": f"drill-{worker}", "level": "INFO", "message": f"{n}"}
                answer = await client.post("/api/v1/logs", json=log)
            except httpx.TransportError:
                self.unanswered += 1
                await trio.sleep(0.05)
                continue
            self.statuses[answer.status_code] += 1
            if answer.status_code == 202:
                self.accepted.append(answer.json()["eventId"])
            else:
                self.refusals[answer.json().get("error", "?")] += 1
                if answer.status_code in (429, 503) and not answer.headers.get("Retry-After"):
                    self.without_retry_after += 1
                await trio.sleep(0.02)
            await trio.sleep(self.pace)


def counted(counter: Iterable[tuple[Any, int]]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counter, key=lambda item: str(item[0]))) or "none"


# -- the drills ---------------------------------------------------------------------------------------------------


async def broker_down(stack: Stack, schema: str) -> Drill:
    drill = Drill(
        "broker-down", "Kafka broker down",
        "circuit breakers open after 10 consecutive failures; `curl .../actuator/metrics/producer.circuit.breaker`",
    )
    gateway = Gateway(stack, "broker-down", {
        "BREAKER_OPEN_SECONDS": "1",
        "READY_TIMEOUT": "1",
        # Records in flight when the broker stops wait for it rather than being dead-lettered.
        "APPLICATION_DELIVERY_TIMEOUT_MS": "120000",
    }, schema)
    async with running(gateway), httpx.AsyncClient(timeout=5) as client:
        application = gateway.url("application")
        stream = LogStream(application)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.run)
            await trio.sleep(1.5)
            before = len(stream.accepted)
            stopping = time.monotonic()
            await trio.to_thread.run_sync(stack.stop_broker)
            stopped = time.monotonic()
            opened = await until(lambda: _breaker_in(client, application, {1.0, 2.0}), timeout=30)
            drill.check(
                "the breaker opens: producer.circuit.breaker 1 (open) or 2 (half-open)",
                f"{await breaker(client, application)}, {time.monotonic() - stopping:.1f} s after the stop began"
                f" (the broker took {stopped - stopping:.1f} s to stop)"
                if opened is not None else "still closed after 30 s",
                opened is not None,
            )
            refused_before = stream.statuses[503]
            await trio.sleep(2)
            ready = await client.get(f"{application}/ready")
            health = await client.get(f"{application}/actuator/health")
            alive = await client.get(f"{application}/health")
            drill.check(
                "requests are answered 503 at once, each with Retry-After",
                f"{stream.statuses[503] - refused_before} answered 503 in 2 s ({counted(stream.refusals.items())}),"
                f" {stream.without_retry_after} without Retry-After",
                stream.statuses[503] > refused_before and stream.without_retry_after == 0,
            )
            drill.check(
                "/ready answers 503 and /actuator/health DOWN; /health still 200 (the process is alive)",
                f"/ready {ready.status_code}, /actuator/health {health.status_code}"
                f" {health.json().get('components', {}).get('kafka', {}).get('status')}, /health {alive.status_code}",
                ready.status_code == 503 and health.status_code == 503 and alive.status_code == 200,
            )
            await trio.to_thread.run_sync(stack.start_broker)
            restarted = time.monotonic()
            closed = await until(lambda: _breaker_in(client, application, {0.0}), timeout=60)
            accepted_at_restart = len(stream.accepted)
            recovered = await until(lambda: _more(stream, accepted_at_restart, 50), timeout=30)
            drill.check(
                "after the restart the breaker closes by itself and requests are taken again (202)",
                f"closed {time.monotonic() - restarted:.1f} s after the restart; 50 more accepted"
                if closed is not None and recovered is not None else f"breaker {await breaker(client, application)}",
                closed is not None and recovered is not None,
            )
            stream.stop()
        accepted = set(stream.accepted)
        found = await trio.to_thread.run_sync(
            lambda: read_event_ids(stack.bootstrap_servers, gateway.topics["application"], accepted, timeout=60)
        )
        missing = accepted - set(found)
        drill.check(
            "nothing answered 202 is lost",
            f"{len(accepted) - len(missing)} of {len(accepted)} accepted events in Kafka ({before} before the stop)",
            not missing,
        )
    return drill


async def _breaker_in(client: httpx.AsyncClient, url: str, states: set[float]) -> bool:
    try:
        return await breaker(client, url) in states
    except httpx.HTTPError:
        return False


async def _more(stream: LogStream, than: int, by: int) -> bool:
    return len(stream.accepted) >= than + by


async def partition(stack: Stack, schema: str) -> Drill:
    drill = Drill(
        "partition", "Network partition (the broker paused with SIGSTOP)",
        "producers buffer messages up to 64MB; when the buffer is exhausted they return HTTP 503",
    )
    buffer_events = 2000
    gateway = Gateway(stack, "partition", {
        "APPLICATION_BUFFER_EVENTS": str(buffer_events),
        "APPLICATION_DELIVERY_TIMEOUT_MS": "120000",
        "READY_TIMEOUT": "1",
    }, schema)
    async with running(gateway), httpx.AsyncClient(timeout=5) as client:
        application = gateway.url("application")
        accepted: list[str] = []
        answers: collections.Counter[str] = collections.Counter()
        pid = await trio.to_thread.run_sync(stack.broker_pid)
        os.kill(pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            full: httpx.Response | None = None
            with trio.move_on_after(30):
                while full is None:
                    logs = [{"source": f"drill-{i % 8}", "level": "INFO", "message": f"p{i}"} for i in range(100)]
                    answer = await client.post(f"{application}/api/v1/logs/batch", json={"logs": logs})
                    answers[str(answer.status_code)] += 1
                    if answer.status_code == 202:
                        accepted.extend(answer.json()["eventIds"])
                    elif answer.status_code == 503:
                        full = answer
            fill = (await metric(client, application, "producer.buffer.fill.ratio")).get("VALUE", 0.0)
            drill.check(
                f"the buffer fills while the broker answers nothing ({buffer_events} events here)",
                f"{len(accepted)} events accepted, then full: producer.buffer.fill.ratio {fill:.2f}",
                full is not None and fill >= 0.95,
            )
            error = full.json().get("error") if full is not None else None
            drill.check(
                "then 503 'buffer full' with Retry-After propagates the backpressure to the client",
                f"503 {error!r} Retry-After {full.headers.get('Retry-After')!r}"
                f" after {time.monotonic() - paused:.1f} s (answers {counted(answers.items())})"
                if full is not None else "no 503 within 30 s",
                full is not None and error == "buffer full" and bool(full.headers.get("Retry-After")),
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()

        async def drained() -> bool:
            return (await metric(client, application, "producer.buffer.events")).get("VALUE", 1.0) == 0.0

        took = await until(drained, timeout=90)
        log = {"source": "drill", "level": "INFO", "message": "after"}
        after = await client.post(f"{application}/api/v1/logs", json=log)
        if after.status_code == 202:
            accepted.append(after.json()["eventId"])
        drill.check(
            "when the broker answers again the buffer drains and requests are taken again (202)",
            f"drained {time.monotonic() - resumed:.1f} s after SIGCONT; next request {after.status_code}"
            if took is not None else "the buffer did not drain within 90 s",
            took is not None and after.status_code == 202,
        )
        expected = set(accepted)
        found = await trio.to_thread.run_sync(
            lambda: read_event_ids(stack.bootstrap_servers, gateway.topics["application"], expected, timeout=60)
        )
        drill.check(
            "nothing answered 202 is lost",
            f"{len(expected & set(found))} of {len(expected)} accepted events in Kafka",
            expected <= set(found),
        )
    return drill


class TransactionStream:
    """Transactions, each with its own Idempotency-Key, sent again (same key) until answered 202."""

    def __init__(self, urls: Callable[[], str], workers: int = 4) -> None:
        self.urls = urls
        self.workers = workers
        self.accepted: dict[str, str] = {}  # key -> event id
        self.retries = 0
        self._stop = trio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            async with trio.open_nursery() as nursery:
                for worker in range(self.workers):
                    nursery.start_soon(self._worker, client, worker)

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            key = f"drill-{worker}-{n}-{uuid.uuid4().hex[:6]}"
            amount = f"{n}.{random.randint(0, 99):02d}"
            body = {"userId": f"user-{worker}", "type": "PAYMENT", "amount": amount, "currency": "EUR"}
            with trio.move_on_after(60):
                while True:
                    try:
                        answer = await client.post(
                            f"{self.urls()}/api/v1/transactions", json=body, headers={"Idempotency-Key": key}
                        )
                        if answer.status_code == 202:
                            self.accepted[key] = answer.json()["eventId"]
                            break
                    except httpx.TransportError:
                        pass
                    self.retries += 1
                    await trio.sleep(0.1)
            await trio.sleep(0.01)


async def crash(stack: Stack, schema: str) -> Drill:
    drill = Drill(
        "crash", "Shipper crash (the gateway killed with SIGKILL)",
        "application/infrastructure: unsent messages lost (acceptable for logs); transactions: the outbox replays them",
    )
    gateway = Gateway(stack, "crash", {}, schema)
    await gateway.start()
    try:
        logs = LogStream(gateway.url("application"), workers=2)
        transactions = TransactionStream(lambda: gateway.url("transaction"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(logs.run)
            nursery.start_soon(transactions.run)
            await trio.sleep(2.0)
            await gateway.kill()
            killed_at = len(logs.accepted)
            accepted_before_kill = len(transactions.accepted)
            await trio.sleep(0.5)
            await gateway.start()  # the same ports and database: clients retry against it
            await trio.sleep(2.0)
            logs.stop()
            transactions.stop()
        async with httpx.AsyncClient(timeout=5) as client:

            async def published() -> bool:
                pending = await metric(client, gateway.url("transaction"), "outbox.pending.events")
                return pending.get("VALUE", 1.0) == 0

            drained = await until(published, timeout=60)
            drill.check(
                "after the restart the outbox relay publishes what was committed and not yet published",
                f"outbox.pending.events 0 {drained:.1f} s after the restart"
                if drained is not None else "still pending",
                drained is not None,
            )
        event_ids = set(transactions.accepted.values())
        found = await trio.to_thread.run_sync(
            lambda: read_event_ids(
                stack.bootstrap_servers, gateway.topics["transaction"], event_ids, timeout=60, settle=2.0
            )
        )
        twice = {event_id for event_id, count in found.items() if count > 1}
        drill.check(
            "every transaction answered 202 is in Kafka exactly once (clients retried with their Idempotency-Key)",
            f"{len(event_ids & set(found))} of {len(event_ids)} accepted ({accepted_before_kill} before the kill,"
            f" {transactions.retries} retries), {len(twice)} twice, {len(set(found) - event_ids)} never accepted",
            set(found) == event_ids and not twice and bool(event_ids),
        )
        accepted_logs = set(logs.accepted)
        found_logs = await trio.to_thread.run_sync(
            lambda: read_event_ids(stack.bootstrap_servers, gateway.topics["application"], accepted_logs, timeout=15)
        )
        after_restart = set(logs.accepted[killed_at:])
        lost = accepted_logs - set(found_logs)
        buffer_bound = 100_000
        drill.check(
            "logs: only those still in the killed process's buffer are lost;"
            " those accepted after the restart are all there",
            f"{len(lost)} of {killed_at} accepted before the kill lost; {len(after_restart & set(found_logs))} of"
            f" {len(after_restart)} accepted after the restart in Kafka",
            len(lost) <= buffer_bound and after_restart <= set(found_logs) and not (lost & after_restart),
        )
    finally:
        with trio.CancelScope(shield=True):
            await gateway.stop()
    return drill


async def overload(stack: Stack, schema: str) -> Drill:
    drill = Drill(
        "overload", "Overload (more than the rate limit)",
        "token bucket; `rate(producer_throttled_total[1m])`; watch for producer.throttled increases",
    )
    rate_limit, batch = 500, 100
    gateway = Gateway(stack, "overload", {"APPLICATION_RATE_LIMIT": str(rate_limit), "MAX_BATCH_EVENTS": "500"}, schema)
    async with running(gateway), httpx.AsyncClient(timeout=5) as client:
        application = gateway.url("application")
        before = (await metric(client, application, "producer.throttled")).get("COUNT", 0.0)
        answers: collections.Counter[int] = collections.Counter()
        accepted: list[str] = []
        refused_events = 0
        without_retry_after = 0
        started = time.monotonic()

        async def client_loop() -> None:
            nonlocal refused_events, without_retry_after
            logs = [{"source": f"drill-{i % 8}", "level": "INFO", "message": f"o{i}"} for i in range(batch)]
            while time.monotonic() - started < 3.0:
                answer = await client.post(f"{application}/api/v1/logs/batch", json={"logs": logs})
                answers[answer.status_code] += 1
                if answer.status_code == 202:
                    accepted.extend(answer.json()["eventIds"])
                elif answer.status_code == 429:
                    refused_events += batch
                    without_retry_after += not answer.headers.get("Retry-After")

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client_loop)
        elapsed = time.monotonic() - started
        drill.check(
            "requests over the rate limit are answered 429, each with Retry-After",
            f"answers {counted(answers.items())} in {elapsed:.1f} s; {without_retry_after} 429s without Retry-After",
            answers[429] > 0 and without_retry_after == 0 and set(answers) <= {202, 429},
        )
        after = (await metric(client, application, "producer.throttled")).get("COUNT", 0.0)
        text = (await client.get(f"{application}/metrics")).text
        exported = next(
            (float(line.split()[-1]) for line in text.splitlines()
             if line.startswith('producer_throttled_total{service="application"}')), 0.0,
        )
        drill.check(
            "producer_throttled_total (producer.throttled) rises by exactly the events refused",
            f"+{after - before:.0f} (actuator), {exported:.0f} in /metrics, {refused_events} events refused",
            after - before == refused_events and exported == after,
        )
        ceiling = rate_limit * elapsed + 500 + batch * 4  # the bucket's burst, and batches taken as it refilled
        drill.check(
            f"no more is taken than the limit allows ({rate_limit} events/s and a burst of 500)",
            f"{len(accepted)} events accepted in {elapsed:.1f} s (at most {ceiling:.0f})",
            0 < len(accepted) <= ceiling,
        )
    return drill


RUNNERS: dict[str, Callable[[Stack, str], Awaitable[Drill]]] = {
    "broker-down": broker_down,
    "partition": partition,
    "crash": crash,
    "overload": overload,
}


async def run(names: list[str], stack: Stack) -> list[Drill]:
    schema = f"drill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    drills: list[Drill] = []
    try:
        for name in names:
            try:
                with trio.fail_after(DRILL_SECONDS):
                    drills.append(await RUNNERS[name](stack, schema))
            except (trio.TooSlowError, RuntimeError, httpx.HTTPError, OSError) as error:
                failed = Drill(name, f"{name}: stopped", "")
                failed.check("the drill runs to its end", f"{type(error).__name__}: {error}", False)
                drills.append(failed)
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return drills


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(DRILLS), help=f"comma-separated drills (default all: {', '.join(DRILLS)})"
    )
    parser.add_argument("--keep", action="store_true", help="leave the drill's Kafka and PostgreSQL running")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(names) - set(DRILLS)
    if unknown:
        parser.error(f"no drill {', '.join(sorted(unknown))}; there are {', '.join(DRILLS)}")
    env = {
        **os.environ,
        "INFRA_DIR": os.environ.get("INFRA_DIR", str(DEFAULT_INFRA_DIR)),
        "KAFKA_PORT_BASE": os.environ.get("KAFKA_PORT_BASE", DEFAULT_KAFKA_PORT_BASE),
        "PG_PORT": os.environ.get("PG_PORT", DEFAULT_PG_PORT),
    }
    stack = Stack.from_env(env)
    started = time.monotonic()
    print(f"drill: a stack of its own in {stack.infra.infra_dir} (Kafka 127.0.0.1:{stack.infra.kafka_port_base},"
          f" PostgreSQL 127.0.0.1:{stack.infra.pg_port})", flush=True)
    try:
        stack.up()
        drills = trio.run(run, names, stack)
    finally:
        if not args.keep:
            stack.down()
    print(f"\n== summary ({time.monotonic() - started:.0f} s; gateway logs in {stack.logs})")
    for drill in drills:
        passed = sum(check.ok for check in drill.checks)
        print(f"   {'PASS' if drill.passed else 'FAIL'}  {drill.name}: {passed} of {len(drill.checks)} checks")
    return 0 if drills and all(drill.passed for drill in drills) else 1


if __name__ == "__main__":
    sys.exit(main())
