"""scripts/loadgen.py: its arithmetic, its two loops against a server of known speed, and whole runs
against a real gateway with every accepted event read back from Kafka."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import urllib.parse
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx
import pytest
import trio

from app.runtime import Runtime
from scripts import loadgen
from scripts.httpload import Pool, open_loop, request_bytes, send_times
from tests.conftest import Infra

ROOT = Path(__file__).resolve().parent.parent


# -- arithmetic --------------------------------------------------------------------------


def test_the_latency_summary_is_in_milliseconds_with_nearest_rank_percentiles() -> None:
    summary = loadgen.latency_summary([i / 1000 for i in range(1000, 0, -1)])  # seconds, unsorted
    assert summary is not None
    assert summary["count"] == 1000
    assert summary["p50"] == pytest.approx(500) and summary["p99.9"] == pytest.approx(999)
    assert summary["max"] == pytest.approx(1000) and summary["mean"] == pytest.approx(500.5)
    assert loadgen.latency_summary([]) is None


def test_the_open_loop_schedule_is_fixed_and_lazy() -> None:
    assert list(send_times(4, 5)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(send_times(4, 0)) == []
    schedule = send_times(1000, 10**12)  # a generator: nothing is allocated ahead
    assert [next(schedule) for _ in range(3)] == [0.0, 0.001, 0.002]


def test_mix_and_topics() -> None:
    assert loadgen.parse_mix("logs=3, metrics=1,batch=0") == {"logs": 3.0, "metrics": 1.0}
    for bad in ("logs", "nope=1", "logs=-1", "logs=0"):
        with pytest.raises(ValueError):
            loadgen.parse_mix(bad)
    assert loadgen.topics_for({"logs": 1}, []) == {"application": "application-logs"}
    assert loadgen.topics_for({"logs": 1}, ["mine"]) == {"application": "mine"}
    # A stream the mode does not send to is ignored, so one set of flags serves every mode.
    assert loadgen.topics_for({"transactions": 1}, ["application=a", "transaction=t"]) == {"transaction": "t"}
    with pytest.raises(ValueError, match="name each"):
        loadgen.topics_for({"logs": 1, "metrics": 1}, ["mine"])
    with pytest.raises(ValueError, match="STREAM one of"):
        loadgen.topics_for({"logs": 1}, ["nope=t"])


def _payloads(mode: str, **options: Any) -> loadgen.Payloads:
    options = {"batch_size": 3, "ndjson": False, "api_key": None, "run_id": "r1", "seed": 1, **options}
    return loadgen.Payloads("h:1", "", {mode: 1.0}, **options)


def _split(request: bytes) -> tuple[str, bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    return head.decode(), body


def test_requests_carry_distinct_events_and_keys() -> None:
    payloads = _payloads("transactions", api_key="k")
    heads = [_split(payloads.build(seq)[1])[0] for seq in range(3)]
    keys = [key.group(1) for head in heads if (key := re.search(r"Idempotency-Key: (\S+)", head))]
    assert len(set(keys)) == 3 and all("Authorization: Bearer k" in head for head in heads)

    kind, request, events = _payloads("transactions-batch").build(5)
    items = json.loads(_split(request)[1])["transactions"]
    assert (kind.path, events) == ("/api/v1/transactions/batch", 3)
    assert len({item["idempotencyKey"] for item in items}) == 3

    kind, request, events = _payloads("metrics-batch", ndjson=True).build(0)
    head, body = _split(request)
    assert "Content-Type: application/x-ndjson" in head
    samples = [json.loads(line) for line in body.splitlines()]
    assert len(samples) == events == 3 and {"host", "metric", "value", "unit", "labels", "timestamp"} <= samples[0].keys()

    messages = {json.loads(_split(_payloads("logs").build(seq)[1])[1])["message"] for seq in range(10)}
    assert len(messages) == 10


# -- the two loops, against a server that answers one request at a time ------------------


async def _serial_server(nursery: trio.Nursery, delay: float) -> int:
    """An HTTP server that takes ``delay`` per request, one request at a time, whatever the connections."""
    busy = trio.Lock()
    answered = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal answered
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                declared = re.search(rb"(?i)content-length: *(\d+)", head)
                assert declared is not None, head
                length = int(declared.group(1))
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[length:]
                async with busy:
                    await trio.sleep(delay)
                    answered += 1
                    body = json.dumps({"status": "accepted", "eventId": f"e-{answered}"}).encode()
                await stream.send_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except trio.BrokenResourceError:
            return

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def _plan(port: int, **loop: Any) -> loadgen.Plan:
    settings: dict[str, Any] = {"concurrency": None, "rate": None, "requests": None, "duration": None, **loop}
    return loadgen.Plan(
        host="127.0.0.1", port=port, payloads=_payloads("logs"), timeout=5.0, max_connections=64, progress=False,
        run_id="r1", **settings,
    )


async def test_open_loop_latency_counts_from_the_schedule(nursery: trio.Nursery) -> None:
    """20 requests offered at 100/s to a server that serves 20/s, over one connection: the requests
    queue in the client, and that queue shows in the latency.

    The last request is scheduled at 0.19 s and cannot be answered before 20 x 50 ms = 1 s, so its
    latency is at least 0.81 s, though each exchange on the wire takes 50 ms. A closed loop
    against the same server sees 50 ms per request."""
    port = await _serial_server(nursery, delay=0.05)
    plan = _plan(port, rate=100.0, requests=20)
    plan.max_connections = 1
    results, elapsed = await loadgen.run_load(plan)
    assert list(results.status) == [202] * 20
    assert sorted(results.sent) == [i / 100 for i in range(20)]  # the schedule, not the moment of sending
    assert max(results.latency) >= 0.8
    assert elapsed >= 1.0
    assert len(set(results.accepted["application"])) == results.events_accepted == 20

    results, _ = await loadgen.run_load(_plan(port, concurrency=1, requests=10))
    assert list(results.status) == [202] * 10
    assert all(0.05 <= latency < 0.5 for latency in results.latency)


async def test_timeouts_and_refused_connections_are_counted(nursery: trio.Nursery) -> None:
    port = await _serial_server(nursery, delay=2.0)
    plan = _plan(port, concurrency=2, requests=2)
    plan.timeout = 0.2
    results, _ = await loadgen.run_load(plan)
    assert list(results.status) == [loadgen.TIMED_OUT] * 2 and results.events_accepted == 0

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unused = closed.getsockname()[1]
    results, _ = await loadgen.run_load(_plan(unused, rate=50.0, requests=3))
    assert list(results.status) == [loadgen.FAILED] * 3


async def test_the_pool_does_not_reuse_a_connection_the_server_may_be_closing(nursery: trio.Nursery) -> None:
    """A server with a 0.5 s keep-alive timeout: the pool sends on no connection it may be closing."""
    opened = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal opened
        opened += 1
        while True:
            request = b""
            with trio.move_on_after(0.5):
                request = await stream.receive_some(65536)
            if not request:  # idle past the keep-alive timeout, or closed by the client
                await stream.aclose()
                return
            await stream.send_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = int(listeners[0].socket.getsockname()[1])
    request = request_bytes(f"127.0.0.1:{port}", "/", b"{}")

    pool = Pool("127.0.0.1", port, max_idle=0.3)
    assert (await pool.exchange(request)).status == 202
    assert (await pool.exchange(request)).status == 202, "reused while fresh"
    assert opened == 1
    await trio.sleep(0.4)
    assert (await pool.exchange(request)).status == 202, "idle past max_idle: a new one, the server's still open"
    assert opened == 2
    await pool.aclose()

    closed = Pool("127.0.0.1", port, max_idle=10.0)  # only the server's close tells it
    assert (await closed.exchange(request)).status == 202
    await trio.sleep(2.0)
    assert (await closed.exchange(request)).status == 202, "closed by the server: a new one"
    assert opened == 4
    await closed.aclose()


async def test_an_open_loop_takes_turns_on_the_connections_it_opened_first(nursery: trio.Nursery) -> None:
    served: dict[int, int] = {}  # requests per connection, by the order it was accepted in

    async def handle(stream: trio.SocketStream) -> None:
        number = len(served)
        served[number] = 0
        while request := await stream.receive_some(65536):
            assert request.startswith(b"POST")
            served[number] += 1
            await stream.send_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = int(listeners[0].socket.getsockname()[1])
    request = request_bytes(f"127.0.0.1:{port}", "/", b"{}")
    answers = await open_loop("127.0.0.1", port, request, rate=60.0, seconds=0.5, connections=6)
    assert [answer.status for answer in answers] == [202] * 30
    await trio.sleep(0.1)
    assert served == dict.fromkeys(range(6), 5), "one request in turn on each of the six"


# -- whole runs against the gateway, read back from Kafka --------------------------------


async def _loadgen(*args: str, timeout: float = 120.0) -> tuple[int, str]:
    with trio.fail_after(timeout):
        done = await trio.run_process(
            [sys.executable, str(ROOT / "scripts" / "loadgen.py"), "--no-progress", *args],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def _topic_flags(runtime: Runtime) -> list[str]:
    settings = runtime.settings
    return [
        f"--topic=application={settings.application.topic}",
        f"--topic=infrastructure={settings.infrastructure.topic}",
        f"--topic=transaction={settings.transaction.topic}",
    ]


def _assert_all_delivered_once(report: dict[str, Any], requests: int) -> None:
    assert report["requests"]["sent"] == report["requests"]["ok"] == requests
    assert report["status"] == {"202": requests}
    topics = report["verify"]["topics"]
    assert report["verify"]["ok"] is True
    assert sum(t["accepted"] for t in topics.values()) == report["events"]["accepted"] == report["events"]["sent"]
    for row in topics.values():
        assert row["found"] == row["accepted"] > 0
        assert (row["missing"], row["duplicated"], row["mismatched"], row["caught_up"]) == (0, 0, 0, True)


@pytest.mark.integration
async def test_closed_loop_logs_all_in_kafka_once(gateway: Runtime, infra: Infra, tmp_path: Path) -> None:
    report_path, plot_path = tmp_path / "report.json", tmp_path / "latency.png"
    code, output = await _loadgen(
        "--url", gateway.url("application"), "--mode", "logs", "--concurrency", "8", "--requests", "300",
        "--verify", "--bootstrap", infra.kafka_bootstrap_servers, "--topic", gateway.settings.application.topic,
        "--json", str(report_path), "--plot", str(plot_path),
    )
    assert code == 0, output
    report = json.loads(report_path.read_text())
    assert report["loop"] == "closed" and report["concurrency"] == 8
    _assert_all_delivered_once(report, 300)
    assert report["verify"]["topics"][gateway.settings.application.topic]["found"] == 300
    assert report["latency_ms"]["all"]["count"] == 300
    assert 0 < report["latency_ms"]["all"]["p50"] <= report["latency_ms"]["all"]["p99"] <= report["latency_ms"]["all"]["max"]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "OK" in output


@pytest.mark.integration
async def test_open_loop_mixed_streams_all_in_kafka_once(gateway: Runtime, infra: Infra, tmp_path: Path) -> None:
    """Logs, batches, metrics and transactions (read_committed) through the gateway listener."""
    report_path = tmp_path / "report.json"
    code, output = await _loadgen(
        "--url", gateway.url("gateway"), "--mode", "mixed", "--rate", "100", "--requests", "200", "--batch-size", "20",
        "--seed", "7", "--verify", "--bootstrap", infra.kafka_bootstrap_servers, *_topic_flags(gateway),
        "--json", str(report_path),
    )
    assert code == 0, output
    report = json.loads(report_path.read_text())
    assert report["loop"] == "open" and report["rate"] == 100
    _assert_all_delivered_once(report, 200)
    assert len(report["verify"]["topics"]) == 3


@pytest.mark.integration
async def test_verify_fails_when_accepted_events_are_not_in_the_topic(gateway: Runtime, infra: Infra, tmp_path: Path) -> None:
    """Logs are read back from the infrastructure topic, where none of them is: all missing, exit 1."""
    report_path = tmp_path / "report.json"
    code, output = await _loadgen(
        "--url", gateway.url("application"), "--requests", "20", "--concurrency", "2", "--verify",
        "--bootstrap", infra.kafka_bootstrap_servers, "--topic", gateway.settings.infrastructure.topic,
        "--verify-timeout", "3", "--json", str(report_path),
    )
    assert code == 1, output
    report = json.loads(report_path.read_text())
    assert report["requests"]["ok"] == 20
    row = report["verify"]["topics"][gateway.settings.infrastructure.topic]
    assert (row["accepted"], row["found"], row["missing"], len(row["missing_ids"])) == (20, 0, 20, 20)
    assert report["verify"]["ok"] is False
    assert "FAIL" in output


@pytest.mark.integration
async def test_verify_counts_missing_duplicated_and_mismatched_events(gateway: Runtime, infra: Infra) -> None:
    topic = gateway.settings.application.topic
    bootstrap = infra.kafka_bootstrap_servers
    starts = await trio.to_thread.run_sync(loadgen.mark_topics, bootstrap, [topic])
    async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=10) as client:
        answers = [
            await client.post("/api/v1/logs", json={"source": "verify", "level": "INFO", "message": f"m{i}"}) for i in range(5)
        ]
    ids = [answer.json()["eventId"] for answer in answers]
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, json.dumps({"eventId": ids[0]}).encode(), headers=[("event-id", ids[0].encode())])
    producer.produce(topic, json.dumps({"eventId": "something else"}).encode(), headers=[("event-id", ids[1].encode())])
    assert await trio.to_thread.run_sync(producer.flush, 10.0) == 0
    never_produced = str(uuid.uuid4())

    checks = await trio.to_thread.run_sync(loadgen.verify, bootstrap, starts, {topic: [*ids, never_produced]}, 6.0)
    check = checks[topic]
    assert (check.accepted, check.found, check.missing) == (6, 5, [never_produced])
    assert check.duplicated == {ids[0]: 2, ids[1]: 2}
    assert check.mismatched == 1
    assert not check.ok

    checks = await trio.to_thread.run_sync(loadgen.verify, bootstrap, starts, {topic: ids[2:]}, 10.0)
    check = checks[topic]
    assert check.ok and check.caught_up and check.found == 3 and check.other == 4


@pytest.mark.integration
async def test_the_curl_smoke_test_passes_and_fails(gateway: Runtime) -> None:
    """scripts/test-producers.sh against every listener: all PASS; with one listener away, FAIL and exit 1."""
    ports = {name: str(urllib.parse.urlsplit(gateway.url(name)).port) for name in gateway.addresses}
    env = {**os.environ, "TARGET_HOST": "127.0.0.1", **{f"{name.upper()}_PORT": port for name, port in ports.items()}}
    env.pop("API_KEY", None)
    script = str(ROOT / "scripts" / "test-producers.sh")
    with trio.fail_after(60):
        done = await trio.run_process(["bash", script], env=env, capture_stdout=True, check=False)
    output = done.stdout.decode()
    assert done.returncode == 0, output
    assert "FAIL" not in output and output.count("PASS") == 32

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        env["TRANSACTION_PORT"] = str(closed.getsockname()[1])
    with trio.fail_after(60):
        done = await trio.run_process(["bash", script], env=env, capture_stdout=True, check=False)
    output = done.stdout.decode()
    assert done.returncode == 1, output
    assert [line.split(":")[0] for line in output.splitlines() if line.startswith("FAIL")] == [
        "FAIL  transaction /health", "FAIL  transaction /ready", "FAIL  transaction /metrics",
        "FAIL  transaction /openapi.json", "FAIL  transaction via transaction", "FAIL  transaction replayed via transaction",
        "FAIL  transaction replay via transaction", "FAIL  transaction status via transaction",
    ]
