"""scripts/bench.py: the pieces its figures rest on (no broker, no load)."""

from __future__ import annotations

import io
import json
import math
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scripts import bench, bench_support

HEY_OUTPUT = """
Summary:
  Requests/sec:\t1234.5000

Latency distribution:
  50% in 0.0120 secs
  99% in 0.2500 secs

Status code distribution:
  [202]\t900 responses
  [503]\t40 responses

Error distribution:
  [7]\tPost "http://127.0.0.1:1/": context deadline exceeded (Client.Timeout exceeded while awaiting headers)
  [2]\tPost "http://127.0.0.1:1/": EOF
"""


async def call_bare(chunks: list[bytes]) -> tuple[int, bytes]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await bench.bare_app({"type": "http"}, receive, send)
    return sent[0]["status"], sent[1]["body"]


async def test_bare_ceiling_reads_the_whole_body_and_parses_it() -> None:
    body = json.dumps({"source": "a", "level": "INFO", "message": "m"}).encode()
    assert await call_bare([body[:10], body[10:]]) == (202, b'{"status":"accepted"}')
    status, _ = await call_bare([body[:10]])  # truncated JSON
    assert status == 400


async def test_bare_ceiling_completes_the_lifespan() -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await bench.bare_app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_events_are_about_100_bytes_and_vary() -> None:
    rng = random.Random(1)
    values = [bench.compact(bench.log_event(rng, i)) for i in range(1000)]
    assert 90 <= sum(map(len, values)) / len(values) <= 110
    assert len(set(values)) == len(values)


def test_hey_output_counts_refusals_and_requests_without_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[cmd.index("-T") + 1] == "application/vnd.kafka.json.v2+json"
        return subprocess.CompletedProcess(cmd, 0, HEY_OUTPUT, "")

    monkeypatch.setattr(subprocess, "run", run)
    result = bench_support.hey("http://x/", "body", 1, [], content_type="application/vnd.kafka.json.v2+json")
    assert result == {
        "rps": 1234.5, "p50": 12.0, "p99": 250.0, "ok": 900.0, "other": 40.0, "status 503": 40.0, "failed": 9.0,
    }


def test_drive_counts_only_accepted_events(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {"rps": 100.0, "p50": 1.0, "p99": 2.0, "ok": 900.0, "other": 40.0, "status 503": 40.0, "failed": 60.0}
    monkeypatch.setattr(bench, "hey", lambda *args: answer)
    row = bench.drive("batch", "http://x/", Path("body"), 500, [], 1.0)
    assert row.events == pytest.approx(100 * 500 * 0.9)
    assert row.errors == 100
    assert row.note == "not 202: 40 x 503, 60 without an answer"


def rows(**events: float) -> dict[str, bench.Row]:
    return {
        "raw": bench.Row("raw", events=400_000),
        "bare": bench.Row("bare", rps=1000),
        "single": bench.Row("single", rps=900, rss_mb=100, ratio=0.9),
        "batch500": bench.Row("batch500", 500, events=events.get("batch500", 300_000), rss_mb=200),
        "workers": bench.Row("workers", rps=1200, rss_mb=300),
        "single_half": bench.Row("single_half", p99=events.get("single_half_p99", 10.0)),
        "tx1_half": bench.Row("tx1_half", p99=30.0),
        "bridge500": bench.Row("bridge500", 500, events=events.get("bridge500", math.nan), rss_mb=900),
    }


def test_targets_are_judged_on_the_figures() -> None:
    lines = bench.targets(rows(bridge500=100_000))
    assert [line.split()[0] for line in lines] == ["PASS", "PASS", "PASS", "PASS", "PASS", "PASS", "PASS", "FAIL"]
    assert "300 MB" in lines[-1]  # the bridge's memory is not the gateway's


def test_single_events_are_judged_on_the_median_of_paired_runs() -> None:
    runs = iter([1000.0, 800.0, 1500.0, 1200.0, 900.0, 870.0])  # bare, gateway, in turn
    bare, single = bench.paired(lambda: bench.Row("bare", rps=next(runs)), lambda: bench.Row("single", rps=next(runs)))
    # Ratios 0.8, 0.8, 0.967: their median; each row the median of its own runs.
    assert (bare.rps, single.rps, single.ratio) == (1000.0, 870.0, 0.8)
    assert bench.targets(rows() | {"single": single})[2].startswith("FAIL")


def test_the_single_event_latency_line_names_the_bare_server_s_tail_beside() -> None:
    lines = bench.targets(rows() | {"bare_half": bench.Row("bare_half", p99=20.5)})
    assert lines[5].startswith("PASS") and "bare hypercorn at the same rate 20.5 ms" in lines[5]


def test_an_open_loop_row_is_the_run_with_the_median_p99() -> None:
    runs = [bench.Row("a", p99=40.0), bench.Row("b", p99=math.nan), bench.Row("c", p99=12.0)]
    assert bench.median_p99(runs).name == "a", "a run without a figure counts as the slowest"
    assert bench.median_p99(runs[:1] + runs[2:] + [bench.Row("d", p99=90.0)]).name == "a"


def test_the_raw_ceiling_produces_the_records_the_gateway_writes() -> None:
    [(key, value, headers)] = bench.gateway_records([{"source": "app-3", "level": "INFO", "message": "hello"}])
    assert key == b"app-3"
    assert {"eventId", "receivedAt", "source", "level", "message"} <= set(json.loads(value))
    assert [name for name, _ in headers or []] == ["event-id", "traceparent", "x-request-id"]


def test_a_missing_bridge_figure_fails_its_target() -> None:
    lines = bench.targets(rows(batch500=100_000))
    assert lines[0].startswith("FAIL") and lines[1].startswith("FAIL")
    assert lines[4].startswith("FAIL") and "no bridge figure" in lines[4]
    assert bench.targets(rows(single_half_p99=15.5))[5].startswith("FAIL")


def test_refusals_are_explained_by_the_gateway_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    scrapes = iter([
        'producer_rejected_total{service="application",reason="full"} 100.0\n',
        '# HELP producer_rejected_total x\nproducer_rejected_total{reason="full",service="application"} 5100.0\n'
        'producer_rejected_total{reason="breaker",service="application"} 0.0\n',
    ])
    monkeypatch.setattr(bench.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(next(scrapes).encode()))
    answer = {"rps": 10.0, "p50": 1.0, "p99": 2.0, "ok": 90.0, "other": 10.0, "status 503": 10.0, "failed": 0.0}
    monkeypatch.setattr(bench, "hey", lambda *args: answer)
    row = bench.drive("batch", "http://x/", Path("body"), 500, [], 1.0, metrics_url="http://x/metrics")
    assert row.note == "not 202: 10 x 503, events refused (application full: 5000)"
