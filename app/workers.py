"""``--workers N``: N copies of the process serving the same ports.

Each copy binds its listeners with ``SO_REUSEPORT``, so the kernel spreads incoming
connections across them and the copies share no Python state (one interpreter, one GIL
each). The supervisor forwards SIGTERM/SIGINT to every copy and waits for their graceful
shutdown; a copy that dies on its own is started again after a pause, unless a signal
came meanwhile. SIGHUP (reload the TLS files) goes to every copy that handles it: one still
starting, or one without TLS, would die of it (its default action); a copy that starts reads the
files anyway, and reads them again once it handles SIGHUP if they changed meanwhile.

Only the first copy runs the host collector, so a host is sampled once, whatever N is.
Each copy has its own metrics: a scrape of a shared port reads one copy, so scrape each copy
on ports of its own (separate processes, see docs/operations.md) when per-process series matter.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping

import trio

log = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 1.0
STOPPED_BY_SIGNAL = frozenset({-signal.SIGTERM, -signal.SIGINT})


def handles(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux's /proc; elsewhere taken to have one)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def worker_env(env: Mapping[str, str], index: int) -> dict[str, str]:
    copy = {**env, "WORKERS": "1", "REUSE_PORT": "true"}
    if index > 0:
        copy["COLLECTOR_INTERVAL"] = "0"
    return copy


async def supervise(count: int, env: Mapping[str, str], argv: list[str]) -> int:
    """Run ``count`` copies of ``python -m app <argv>`` until a signal stops them all; their exit code."""
    stopping = trio.Event()
    stop_signal = signal.SIGTERM  # the signal that set ``stopping``, for copies started after it came
    processes: dict[int, trio.Process] = {}
    exit_codes: list[int] = []

    async def keep_running(index: int) -> None:
        while True:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "app", *argv],
                env=worker_env(env, index),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only, which forwards it once
            )
            processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            if stopping.is_set():  # the signal came while it was being started: forward_signals missed it
                process.send_signal(stop_signal)
            code = await process.wait()
            if stopping.is_set():
                log.info("worker %d stopped (exit %d)", index, code)
                # A copy still starting when the signal came dies of it before it can drain:
                # it had accepted nothing, so that is a clean stop too.
                exit_codes.append(0 if code in STOPPED_BY_SIGNAL else code)
                return
            log.error("worker %d exited on its own (exit %d); starting it again", index, code)
            with trio.move_on_after(RESTART_PAUSE_SECONDS):
                await stopping.wait()
            if stopping.is_set():
                # Nothing runs for this copy: stopping it is done. Started now, it would never get the signal.
                log.info("worker %d not started again: stopping", index)
                exit_codes.append(0)
                return

    async def forward_signals(signals: AsyncIterator[int]) -> None:
        nonlocal stop_signal
        async for signum in signals:
            if signum == signal.SIGHUP:
                forward_reload()
                continue
            stop_signal = signal.Signals(signum)
            stopping.set()
            for process in processes.values():
                if process.returncode is None:
                    process.send_signal(signum)

    def forward_reload() -> None:
        for index, process in sorted(processes.items()):
            if process.returncode is not None:
                continue
            if handles(process.pid, signal.SIGHUP):
                process.send_signal(signal.SIGHUP)
                log.info("SIGHUP forwarded to worker %d (pid %d)", index, process.pid)
            else:
                log.info("SIGHUP not forwarded to worker %d (pid %d): it does not handle it yet", index, process.pid)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(forward_signals, signals)
            async with trio.open_nursery() as workers:
                for index in range(count):
                    workers.start_soon(keep_running, index)
            outer.cancel_scope.cancel()
    # 0 when every copy shut down cleanly; else the first failure's code (128 + N for signal N).
    failure = next((code for code in exit_codes if code != 0), 0)
    return 128 - failure if failure < 0 else failure


def run(count: int, argv: list[str]) -> int:
    return trio.run(supervise, count, dict(os.environ), argv)
