"""scripts/bench.py: the pieces its figures rest on (no broker, no load)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import namedtuple
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.dialects import collectd, es_bulk, forward, hec, loki, remote_write, syslog
from app.dialects.base import JSON, Limits, Request
from scripts import bench, bench_dialects, bench_support

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
        "batch500_disk": bench.Row("batch500_disk", 500, events=events.get("batch500_disk", 240_000), rss_mb=150),
        "single_half_disk": bench.Row("single_half_disk", p99=events.get("single_half_disk_p99", 19.0)),
    }


def test_targets_are_judged_on_the_figures() -> None:
    lines = bench.targets(rows(bridge500=100_000))
    assert [line.split()[0] for line in lines] == ["PASS"] * 9 + ["FAIL"]
    assert "300 MB" in lines[-1]  # the bridge's memory is not the gateway's


def test_single_events_are_judged_on_the_median_of_paired_runs() -> None:
    runs = iter([1000.0, 800.0, 1500.0, 1200.0, 900.0, 870.0])  # bare, gateway, in turn
    bare, [single] = bench.paired(
        lambda: bench.Row("bare", rps=next(runs)), [lambda: bench.Row("single", rps=next(runs))]
    )
    # Ratios 0.8, 0.8, 0.967: their median; each row the median of its own runs.
    assert bare is not None
    assert (bare.rps, single.rps, single.ratio) == (1000.0, 870.0, 0.8)
    assert bench.targets(rows() | {"single": single})[2].startswith("FAIL")


def test_a_baseline_s_single_events_run_in_the_same_rounds() -> None:
    order: list[str] = []

    def run(name: str, rps: float) -> bench.Row:
        order.append(name)
        return bench.Row(name, rps=rps)

    rates = {"bare": iter([1000.0, 1000.0, 1000.0]), "now": iter([900.0, 950.0, 800.0]), "then": iter([700.0, 600, 800])}
    bare, [now, then] = bench.paired(
        lambda: run("bare", next(rates["bare"])), [lambda: run("now", next(rates["now"])), lambda: run("then", next(rates["then"]))]
    )
    assert order == ["bare", "now", "then"] * 3
    assert (now.rps, now.ratio, then.rps, then.ratio) == (900.0, 0.9, 700.0, 0.7)
    # Without the ceiling (--only single): one round, no ratio.
    none, [alone] = bench.paired(None, [lambda: bench.Row("single", rps=5.0)], rounds=1)
    assert none is None and alone.rps == 5.0 and math.isnan(alone.ratio)


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
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(next(scrapes).encode()))
    answer = {"rps": 10.0, "p50": 1.0, "p99": 2.0, "ok": 90.0, "other": 10.0, "status 503": 10.0, "failed": 0.0}
    monkeypatch.setattr(bench, "hey", lambda *args: answer)
    row = bench.drive("batch", "http://x/", Path("body"), 500, [], 1.0, metrics_url="http://x/metrics")
    assert row.note == "not 202: 10 x 503, events refused (application full: 5000)"


# -- the percentile every benchmark reports --------------------------------------------------------


def test_the_percentile_of_a_known_series_is_its_nearest_rank_in_any_order() -> None:
    series = [float(i) for i in range(1, 1001)]
    random.Random(17).shuffle(series)
    percentile = bench_support.percentile
    assert [percentile(series, q) for q in (0.5, 0.9, 0.99, 0.999, 1.0)] == [500, 900, 990, 999, 1000]
    assert [percentile([4.0, 1.0, 3.0, 2.0], q) for q in (0, 0.25, 0.26, 0.5, 0.51, 0.99, 1)] == [1, 1, 2, 2, 3, 4, 4]
    # Of 100 values p99 is the 99th, not the largest; 0.07 * 100 is 7.000000000000001, and p7 still the 7th.
    assert (percentile(range(1, 101), 0.99), percentile(range(1, 101), 0.07)) == (99, 7)


def test_the_percentile_of_one_value_is_that_value_and_of_none_is_nan() -> None:
    assert {bench_support.percentile([7.5], q) for q in (0, 0.5, 0.99, 1.0)} == {7.5}
    assert math.isnan(bench_support.percentile([], 0.99))
    assert math.isnan(bench_support.percentile(iter([]), 0.5))


@pytest.mark.parametrize("q", [99, 1.01, -0.5, math.nan])
def test_a_percentile_outside_0_to_1_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="from 0 to 1"):
        bench_support.percentile([1.0, 2.0], q)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=3000), st.sampled_from(["0.5", "0.9", "0.99", "0.999", "1"]))
def test_the_percentile_is_the_smallest_value_with_a_share_q_at_or_below_it(values: list[float], q: str) -> None:
    value = bench_support.percentile(values, float(q))
    assert value in values
    assert sum(v <= value for v in values) >= Fraction(q) * len(values)
    assert sum(v < value for v in values) < Fraction(q) * len(values)


# -- CPU per accepted event ------------------------------------------------------------------------

Times = namedtuple("Times", "user system children_user children_system iowait")


class FakeProcess:
    """psutil.Process over a fixed tree: pid -> (cpu_times, children's pids); a pid in ``gone`` has
    exited since its parent listed it."""

    tree: dict[int, tuple[Times, list[int]]] = {}
    gone: set[int] = set()

    def __init__(self, pid: int) -> None:
        if pid not in self.tree:
            raise psutil.NoSuchProcess(pid)
        self.pid = pid

    def cpu_times(self) -> Times:
        if self.pid in self.gone:
            raise psutil.NoSuchProcess(self.pid)
        return self.tree[self.pid][0]

    def children(self, recursive: bool = False) -> list[FakeProcess]:
        assert recursive, "--workers copies are grandchildren of nothing, but a tree is walked whole"
        found = []
        for pid in self.tree[self.pid][1]:
            found.append(FakeProcess(pid))
            found += FakeProcess(pid).children(recursive=True)
        return found


def test_a_process_tree_s_cpu_is_its_processes_and_the_children_they_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "Process", FakeProcess)
    monkeypatch.setattr(FakeProcess, "tree", {
        1: (Times(1.0, 0.5, 0.25, 0.25, 9.0), [2, 3]),  # the supervisor; iowait is not CPU
        2: (Times(2.0, 1.0, 0.0, 0.0, 0.0), [4]),
        3: (Times(3.0, 1.0, 0.0, 0.0, 0.0), []),
        4: (Times(0.5, 0.5, 0.0, 0.0, 0.0), []),
    })
    assert bench.tree_cpu_seconds(1) == pytest.approx(2.0 + 3.0 + 4.0 + 1.0)
    # A copy that exits before it is sampled is left out of that sample; a supervisor gone is no figure.
    monkeypatch.setattr(FakeProcess, "gone", {3})
    assert bench.tree_cpu_seconds(1) == pytest.approx(6.0)
    assert math.isnan(bench.tree_cpu_seconds(99))


def test_a_real_tree_counts_live_and_reaped_children() -> None:
    burn = "import time\nwhile time.process_time() < 0.3: pass\n"
    live = burn + "import sys\nprint('burnt', flush=True)\nsys.stdin.read()\n"
    script = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {burn!r}])\n"  # reaped: in the parent's children_*
        f"live = subprocess.Popen([sys.executable, '-c', {live!r}], stdin=subprocess.PIPE)\n"  # running
        "sys.stdin.read()\nlive.stdin.close()\nlive.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "burnt\n"
        own = psutil.Process(parent.pid).cpu_times()
        # Two children of 0.3 s each (psutil counts in clock ticks): more than the parent alone.
        assert bench.tree_cpu_seconds(parent.pid) >= 0.55 > own.user + own.system
    finally:
        parent.communicate("", timeout=30)


def test_cpu_per_event_is_the_delta_over_the_accepted_events() -> None:
    assert bench.per_event_us(10.0, 10.5, 1000) == pytest.approx(500.0)
    assert math.isnan(bench.per_event_us(10.0, 10.5, 0)), "no accepted events: blank"
    assert math.isnan(bench.per_event_us(math.nan, 10.5, 1000)), "the server was gone"
    assert math.isnan(bench.per_event_us(10.0, 10.5, math.nan))


def test_drive_takes_the_server_s_cpu_over_the_measured_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([7.0, 7.9])  # before and after the measured run; the warm-up is not sampled
    calls: list[str] = []

    def fake_hey(url: str, body: str, seconds: float, *rest: Any) -> dict[str, float]:
        calls.append(f"hey {seconds}")
        return {"rps": 100.0, "p50": 1.0, "p99": 2.0, "ok": 900.0, "other": 100.0, "status 503": 100.0, "failed": 0.0}

    def fake_cpu(pid: int) -> float:
        calls.append(f"cpu {pid}")
        return next(clock)

    monkeypatch.setattr(bench, "hey", fake_hey)
    monkeypatch.setattr(bench, "tree_cpu_seconds", fake_cpu)
    monkeypatch.setattr(bench.RssSampler, "_sample", lambda self: None)
    row = bench.drive("batch", "http://x/", Path("body"), 500, [], 1.0, bench.RssSampler(42), warm_up=0.5)
    assert calls == ["hey 0.5", "cpu 42", "hey 1.0", "cpu 42"]
    assert row.cpu_us == pytest.approx(0.9e6 / (900 * 500)), "per accepted event, not per request sent"
    assert math.isnan(bench.drive("batch", "http://x/", Path("body"), 500, [], 1.0).cpu_us), "no server: blank"


def test_the_table_puts_cpu_after_events_and_leaves_it_blank_without_events(capsys: pytest.CaptureFixture[str]) -> None:
    now = bench.Row("gateway", 500, 100.0, 50_000.0, 20.0, 0.0, cpu_us=12.34, vs_cpu=0.9, vs_events=1.1)
    then = bench.Row("  baseline abc1234", 500, 90.0, 45_000.0, 25.0, 0.0, cpu_us=13.7)
    empty = bench.Row("bytes stored", note="8.4 MiB")
    bench.print_table([now, then, empty], baseline_column=True)
    header, _, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[3:8] == ["events/s", "CPU", "µs/ev", "vs", "baseline"]
    assert lines[0].split()[3:7] == ["50,000", "12.3", "0.90", "/"] and lines[0].split()[7] == "1.10"
    assert lines[1].split()[4:6] == ["45,000", "13.7"]
    assert lines[2].split() == ["bytes", "stored", "1", "8.4", "MiB"]
    bench.print_table([now])
    assert "vs baseline" not in capsys.readouterr().out, "the column is there only with a baseline"


def test_targets_name_the_cpu_per_event_beside() -> None:
    figures = rows(bridge500=100_000)
    figures["batch500"].cpu_us, figures["raw"].cpu_us = 12.0, 3.5
    lines = bench.targets(figures)
    assert lines[0].endswith("(300,000; CPU µs/ev: batch 12.0)")
    assert "CPU µs/ev: batch 12.0, raw 3.5" in lines[1]
    assert "CPU" not in lines[2], "no figure, nothing said"


def test_baseline_ratios_are_this_code_over_the_baseline() -> None:
    now = {"batch500": bench.Row("b", events=50_000, cpu_us=9.0), "raw": bench.Row("raw", events=1.0, cpu_us=1.0)}
    then = {"batch500": bench.Row("b", events=40_000, cpu_us=12.0)}
    bench.compare_with_baseline(now, then)
    assert (now["batch500"].vs_cpu, now["batch500"].vs_events) == (0.75, 1.25)
    assert math.isnan(now["raw"].vs_cpu), "no baseline row, no ratio"
    lines = bench.baseline_lines(now, then, "abc1234")
    assert lines[1] == "  batch500    CPU µs/ev 9.0 against 12.0 (0.75 x); events/s 50,000 against 40,000 (1.25 x)"


# -- row selection ---------------------------------------------------------------------------------


def test_only_selects_rows_in_the_table_s_order_with_what_they_need() -> None:
    assert bench.select_rows(None) == bench.ROW_KEYS
    assert bench.select_rows("batch500,single") == ("single", "batch500")
    assert bench.select_rows("tx1_half") == ("tx1", "tx1_half"), "the open loop runs at half tx1's rate"
    assert bench.select_rows(" bare_half ,") == ("single", "bare_half")
    # A disk-mode row brings its memory-mode row, and what that one needs.
    assert bench.select_rows("single_half_disk") == ("single", "single_half", "single_half_disk")
    assert bench.select_rows("batch500_disk,hec") == ("batch500", "batch500_disk", "hec")
    assert bench.select_rows("remote_write,es_bulk,hec,loki,collectd,syslog,forward_ack,otlp_grpc") == (
        "otlp_grpc", "remote_write", "es_bulk", "hec", "loki", "collectd", "syslog", "forward_ack",
    )
    with pytest.raises(ValueError, match="unknown rows batch5000; the rows are raw, raw_plain"):
        bench.select_rows("single,batch5000")
    with pytest.raises(ValueError, match="none given"):
        bench.select_rows(",")


def test_every_row_is_measured_somewhere() -> None:
    placed = {"raw", "raw_plain", "bare", "codec", *bench.GATEWAY_ORDER, *bench.WORKERS_ROWS, *bench.BRIDGE_NAMES}
    assert placed == set(bench.ROW_KEYS)
    assert set(bench.STEPS) | set(bench.OPEN_LOOPS) | set(bench.SOCKET_STEPS) == bench.BASELINE_ROWS
    assert not set(bench.STEPS) & set(bench.SOCKET_STEPS)
    assert bench.DISK_ROWS <= set(bench.GATEWAY_ORDER) and set(bench.DIALECT_ROWS) <= set(bench.GATEWAY_ORDER)
    assert all(bench.GATEWAY_ORDER.index(need) < bench.GATEWAY_ORDER.index(key) for key, need in bench.NEEDS.items())


def test_disk_mode_is_judged_against_memory_mode() -> None:
    lines = bench.targets(rows(bridge500=100_000))
    assert lines[7] == "PASS  disk mode, log batch of 500 >= 0.7 x memory mode (0.80 x: 240,000 against 300,000)"
    assert lines[8].startswith("PASS  disk mode, single events open loop: p99 <= memory mode's + 10 ms at the same")
    assert "(19.0 ms against 10.0 ms" in lines[8]
    slower = bench.targets(rows(batch500_disk=209_000, single_half_disk_p99=20.5))
    assert slower[7].startswith("FAIL") and slower[8].startswith("FAIL")
    # Without its memory-mode figure (or its own), a disk-mode target fails.
    assert bench.targets({}, ("batch500", "batch500_disk"))[1].startswith("FAIL")
    selected = ("single", "single_half", "single_half_disk")
    assert bench.targets({"single_half": bench.Row("s", p99=3.0)}, selected)[-2].startswith("FAIL")


def test_dialect_and_disk_rows_are_compared_with_the_native_batch_of_their_gateway() -> None:
    now = {"batch500": bench.Row("b", events=100.0), "hec": bench.Row("h", events=50.0),
           "batch500_disk": bench.Row("d", events=80.0), "syslog": bench.Row("s", events=150.0)}
    then = {"batch500": bench.Row("b", events=200.0), "hec": bench.Row("h", events=50.0)}
    bench.assign_ratios(now, now)
    bench.assign_ratios(now, then)
    assert (now["hec"].ratio, now["hec"].against) == (0.5, "native batch of 500")
    assert (now["syslog"].ratio, now["batch500_disk"].ratio, now["batch500_disk"].against) == (1.5, 0.8, "memory mode")
    assert then["hec"].ratio == 0.25, "a baseline's dialect row against the baseline's own batch"


def test_tls_rows_run_beside_their_plain_twins_and_are_compared_with_them() -> None:
    assert bench.select_rows("batch500_tls,single_tls") == ("single", "single_tls", "batch500", "batch500_tls")
    server = bench.Server({"gateway": 1, "application": 2}, bench.RssSampler(42), tls=bench.TLS_LISTENERS)
    assert server.url("application", "/api/v1/logs") == "https://127.0.0.1:2/api/v1/logs"
    assert server.metrics_url("application") == "http://127.0.0.1:1/metrics", "a plain listener: the same registry"
    now = {
        "single": bench.Row("s", events=1000.0, cpu_us=100.0), "single_tls": bench.Row("t", events=800.0, cpu_us=125.0),
        "batch500_tls": bench.Row("b", events=50.0),
    }
    bench.assign_ratios(now, now)
    assert (now["single_tls"].ratio, now["single_tls"].against) == (0.8, "plain HTTP, CPU µs/ev 1.25 x")
    assert math.isnan(now["batch500_tls"].ratio), "no plain figure, no ratio"


def test_targets_of_rows_not_run_are_left_out() -> None:
    lines = bench.targets({"batch500": bench.Row("batch500", 500, events=300_000, rss_mb=90)}, ("single", "batch500"))
    assert [line.split("  ")[1].split(" (")[0] for line in lines] == [
        "log batch of 500 >= 250,000 events/s", "gateway peak RSS < 256 MB",
    ]
    assert bench.targets({"raw": bench.Row("raw", events=1.0)}, ("raw",)) == []


# -- the baseline worktree ---------------------------------------------------------------------------


def test_the_baseline_worktree_is_detached_and_removed_by_force(tmp_path: Path) -> None:
    root = str(bench_support.ROOT)
    assert bench.worktree_add_command(tmp_path / "tree", "0123abc") == [
        "git", "-C", root, "worktree", "add", "--detach", "--quiet", str(tmp_path / "tree"), "0123abc",
    ]
    assert bench.worktree_remove_command(tmp_path / "tree") == [
        "git", "-C", root, "worktree", "remove", "--force", str(tmp_path / "tree"),
    ]


def test_the_baseline_gateway_runs_from_its_worktree_with_this_venv(tmp_path: Path) -> None:
    assert bench_support.app_command(["--workers", "2"]) == [sys.executable, "-m", "app", "--workers", "2"]
    env = bench_support.app_env(tmp_path, {"PATH": "/bin", "PYTHONPATH": "/extra"})
    assert env == {"PATH": "/bin", "PYTHONPATH": f"{tmp_path}:/extra"}
    assert bench_support.app_env(tmp_path, {})["PYTHONPATH"] == str(tmp_path)


def test_python_m_app_in_another_tree_imports_that_tree_s_app(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    assert bench.imports_from(tmp_path) == (tmp_path / "app" / "__init__.py").resolve()
    assert bench.imports_from(bench_support.ROOT) == (bench_support.ROOT / "app" / "__init__.py").resolve()


# -- the dialects' bodies: what the gateway's own dialects decode --------------------------------

LIMITS = Limits(max_events=10_000, max_decompressed_bytes=32 * 2**20)


def bench_events(count: int = 500) -> list[dict[str, Any]]:
    rng = random.Random(1)
    return [bench.log_event(rng, i) for i in range(count)]


def test_the_http_dialect_bodies_decode_to_their_events_with_the_gateway_s_dialects() -> None:
    logs = bench_events()
    messages = [event["message"] for event in logs]
    protobuf, ndjson = "application/x-protobuf", "application/x-ndjson"
    # remote_write: the pipeline inflates Content-Encoding: snappy; without the header the dialect does.
    written = remote_write.REMOTE_WRITE.decode(
        bench_dialects.remote_write_body(500), Request("POST", "/api/v1/write", {}, media_type=protobuf), LIMITS
    ).events
    assert len(written) == 500 and len({(e.host, e.metric, tuple(e.labels.items())) for e in written}) == 500
    assert {e.host for e in written} == {f"web-{i}:9100" for i in range(5)}
    bulk = es_bulk.POST.decode(
        bench_dialects.es_bulk_body(logs), Request("POST", "/_bulk", {}, media_type=ndjson), LIMITS
    )
    assert [e.message for e in bulk.events] == messages
    assert [e.level for e in bulk.events] == [event["level"] for event in logs]
    hec_events = hec.endpoints().events.decode(
        bench_dialects.hec_body(logs), Request("POST", "/services/collector/event", {}), LIMITS
    ).events
    assert [(e.source, e.message, e.level) for e in hec_events] == [
        (e["source"], e["message"], e["level"]) for e in logs
    ]
    pushes = ((bench_dialects.loki_protobuf_body(logs), protobuf), (bench_dialects.loki_json_body(logs), JSON))
    for body, media_type in pushes:
        pushed = loki.PUSH.decode(body, Request("POST", "/loki/api/v1/push", {}, media_type=media_type), LIMITS).events
        # Grouped by stream, each stream in time order: the same lines, all of them.
        assert sorted(e.message for e in pushed) == sorted(messages), media_type
        assert {(e.source, e.level) for e in pushed} == {(e["source"], e["level"]) for e in logs}
    values = collectd.WRITE_HTTP.decode(
        bench_dialects.collectd_body(500), Request("POST", "/collectd", {}, media_type=JSON), LIMITS
    )
    assert len(values.events) == 500 and not values.skipped
    few = collectd.WRITE_HTTP.decode(bench_dialects.collectd_body(7), Request("POST", "/", {}), LIMITS)
    assert len(few.events) == 7, "the last value list fits what is left"


def test_syslog_frames_are_octet_counted_rfc_5424_messages() -> None:
    logs = bench_events()
    framer = syslog.Framer()
    framer.receive_data(bench_dialects.syslog_frames(logs))
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
    assert framer.pending() == 0
    parsed = [syslog.parse(frame) for frame in frames]
    assert {(message.format, message.error) for message in parsed} == {("rfc5424", None)}
    events = [syslog.log_event(message, "127.0.0.1", "tcp") for message in parsed]
    assert [(e.source, e.level, e.message) for e in events] == [(e["source"], e["level"], e["message"]) for e in logs]


def test_forward_chunks_are_packed_forward_messages_of_500_entries() -> None:
    logs = bench_events()
    entries = bench_dialects.forward_entries(logs)
    session = forward.Session()
    acked = bench_dialects.forward_message(entries, 500, "Y2h1bms=")
    unacked = bench_dialects.forward_message(entries, 500)
    session.receive_data(acked + unacked)
    first, second = session.next_event(), session.next_event()
    assert isinstance(first, forward.Entries) and isinstance(second, forward.Entries)
    assert (first.chunk, second.chunk, first.dropped) == ("Y2h1bms=", None, 0)
    assert [e.message for e in first.events] == [event["message"] for event in logs]
    assert first.events[0].timestamp == bench_dialects.START
    assert len(base64.b64decode(bench_dialects.chunk_id())) == 16


# -- the socket loads, against listeners made of the gateway's own sans-IO protocols -----------------


@contextlib.contextmanager
def listener(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP listener on a free port whose connections ``serve`` handles, each in a thread."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            thread = threading.Thread(target=serve, args=(connection,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(timeout=5)
        server.close()
        for thread in threads:
            thread.join(timeout=5)


def test_the_acked_forward_load_waits_for_each_chunk_s_ack() -> None:
    taken: list[int] = []

    def serve(connection: socket.socket) -> None:
        session = forward.Session()
        with connection:
            while data := connection.recv(65536):
                session.receive_data(data)
                while (event := session.next_event()) is not None:
                    assert isinstance(event, forward.Entries) and event.chunk is not None
                    taken.append(len(event.events))
                    time.sleep(0.01)
                    connection.sendall(forward.ack(event.chunk))

    entries = bench_dialects.forward_entries(bench_events(20))
    with listener(serve) as port:
        load = bench_dialects.AckedForwardLoad(port, entries, 20, connections=2)
        started = time.monotonic()
        with load.running():
            time.sleep(0.5)
        answered = load.within(started, time.monotonic())
    assert not load.failures
    assert answered and all(completion.ok and completion.latency >= 0.01 for completion in answered)
    # Every ack answered a chunk the listener took whole; at most one chunk per connection was left unanswered.
    assert set(taken) == {20} and len(answered) <= len(taken) <= len(answered) + 2


def test_the_stream_load_writes_whole_frames_until_stopped() -> None:
    frames: list[int] = []

    def serve(connection: socket.socket) -> None:
        framer = syslog.Framer()
        with connection:
            while data := connection.recv(65536):
                framer.receive_data(data)
                while framer.next_frame() is not None:
                    frames.append(1)

    payload = bench_dialects.syslog_frames(bench_events(50))
    with listener(serve) as port:
        assert bench_dialects.listening(port)
        load = bench_dialects.StreamLoad(port, payload, connections=2)
        with load.running():
            time.sleep(0.3)
    assert not load.failures and len(frames) > 100, "the payload, again and again, its frames whole"
    assert not bench_dialects.listening(port)


# -- socket rows -----------------------------------------------------------------------------------


def test_a_counter_is_summed_over_the_samples_whose_labels_match() -> None:
    text = (
        "# TYPE gateway_ingest_events_total counter\n"
        'gateway_ingest_events_total{service="application",dialect="syslog",outcome="accepted"} 1500.0\n'
        'gateway_ingest_events_total{service="application",dialect="syslog",outcome="refused"} 7.0\n'
        'gateway_ingest_events_total{service="application",dialect="forward",outcome="accepted"} 500.0\n'
        'gateway_ingest_events_created{service="application",dialect="syslog",outcome="accepted"} 1.7e9\n'
        "other_total 3.0\n"
    )
    name = "gateway_ingest_events_total"
    assert bench.counter_in(text, name, dialect="syslog", outcome="accepted") == 1500.0
    assert bench.counter_in(text, name, outcome="accepted") == 2000.0
    assert bench.counter_in(text, "other_total") == 3.0
    assert bench.counter_in(text, name, dialect="loki") == 0.0


class FakeLoad(bench_dialects.Load):
    def __init__(self, completions: list[bench_dialects.Completion]) -> None:
        super().__init__(4)
        self.given = completions
        self.refusals = {"StatusCode.UNAVAILABLE": 1}

    @contextlib.contextmanager
    def running(self) -> Iterator[bench_dialects.Load]:
        yield self

    def within(self, start: float, end: float) -> list[bench_dialects.Completion]:
        return self.given


def socket_row_with(monkeypatch: pytest.MonkeyPatch, spec: bench.SocketStep, load: bench_dialects.Load,
                    counts: list[float], cpu: list[float]) -> bench.Row:
    clock = iter([100.0, 102.0])  # the window's start and end: 2 s
    drains: list[float] = []
    monkeypatch.setattr(bench, "drained", lambda taken: drains.append(taken()))
    monkeypatch.setattr(bench, "WARM_UP", 0.0)
    monkeypatch.setattr(bench, "listening", lambda port: True)
    monkeypatch.setattr(bench, "counter_total", lambda *args, **labels: counts.pop(0))
    monkeypatch.setattr(bench, "tree_cpu_seconds", lambda pid: cpu.pop(0))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setattr(bench.RssSampler, "_sample", lambda self: None)
    server = bench.Server({"application": 1, spec.port: 2}, bench.RssSampler(42))
    row = bench.socket_row("row", spec, lambda: load, server, 2.0)
    assert len(drains) == (1 if spec.counted else 0), "a load nothing answers is drained before the next step"
    return row


def test_a_counted_socket_row_takes_the_gateway_s_count_over_the_cpu_window(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = bench.SOCKET_STEPS["syslog"]
    # Scrapes: before and after the window, then the drain's.
    row = socket_row_with(monkeypatch, spec, FakeLoad([]), [1000.0, 21_000.0, 21_500.0], [3.0, 4.0])
    assert (row.events, row.rps) == (10_000.0, 10_000.0) and row.cpu_us == pytest.approx(50.0)
    assert math.isnan(row.p99), "nothing answers a syslog frame"


def test_an_answered_socket_row_counts_what_completed_in_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    done = [bench_dialects.Completion(100.5, 0.010 + i / 1000, True) for i in range(99)]
    done.append(bench_dialects.Completion(101.0, 0.001, False))
    row = socket_row_with(monkeypatch, bench.SOCKET_STEPS["otlp_grpc"], FakeLoad(done), [], [3.0, 4.0])
    assert (row.rps, row.events, row.errors) == (50.0, 99 * 500 / 2, 1.0)
    assert row.p99 == pytest.approx(108.0) and row.cpu_us == pytest.approx(1e6 / (99 * 500))
    assert row.note == "16 connections; 1 x StatusCode.UNAVAILABLE"


def test_a_drain_waits_until_the_count_stands_still(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = iter([10.0, 20.0, 25.0, 25.0, 99.0])
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    bench.drained(lambda: next(counts))
    assert next(counts) == 99.0, "read until two scrapes in a row agree, no further"


def test_a_gateway_without_the_listener_gives_a_row_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "listening", lambda port: False)
    server = bench.Server({"application": 1, "forward": 2}, bench.RssSampler(42))
    row = bench.socket_row("forward", bench.SOCKET_STEPS["forward"], lambda: FakeLoad([]), server, 1.0)
    assert row.note == "n/a: nothing listens on the forward port" and math.isnan(row.events)
