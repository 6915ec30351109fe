"""``--workers N``: copies of the process share the ports; the supervisor keeps them running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from tests.conftest import ROOT, wait_ready
from tests.kafka_reader import KafkaReader
from tests.pki import make_pki, serial_of
from tests.processes import free_port

pytestmark = pytest.mark.integration

# A supervisor whose pause before restarting a copy is long enough for a test to signal it within the pause.
RESTART_PAUSE = 30.0
SUPERVISOR_WITH_A_LONG_PAUSE = (
    f"import sys; from app import __main__, workers; workers.RESTART_PAUSE_SECONDS = {RESTART_PAUSE}; "
    "sys.exit(__main__.main())"
)


async def pids_answering(url: str, connections: int) -> set[int]:
    """The worker pid behind each of ``connections`` fresh connections."""
    pids: set[int] = set()
    for _ in range(connections):
        async with httpx.AsyncClient() as client:  # a new connection each time
            pids.add((await client.get(f"{url}/health")).json()["pid"])
    return pids


async def test_two_workers_share_the_port_and_are_restarted_when_they_die(
    gateway_env: dict[str, str], kafka: KafkaReader
) -> None:
    port = free_port()
    env = {**os.environ, **gateway_env, "APPLICATION_PORT": str(port), "LOG_LEVEL": "WARNING"}
    supervisor = await trio.lowlevel.open_process(
        [sys.executable, "-m", "app", "--workers", "2", "--role", "application"],
        cwd=str(ROOT), env=env, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        with trio.fail_after(30):
            while len(workers := {c.pid for c in psutil.Process(supervisor.pid).children()}) < 2:
                await trio.sleep(0.1)
            while (pids := await pids_answering(url, 40)) != workers:
                await trio.sleep(0.2)  # the second copy may still be starting
        assert pids == workers, "the kernel spread connections over both copies"

        async with httpx.AsyncClient(base_url=url) as client:
            answers = [
                await client.post("/api/v1/logs", json={"source": "w", "level": "INFO", "message": str(n)})
                for n in range(10)
            ]
        assert [a.status_code for a in answers] == [202] * 10
        # Delivered before a copy is killed: SIGKILL loses what a log shipper still buffers.
        ids = {a.json()["eventId"] for a in answers}
        records = await kafka.read(gateway_env["APPLICATION_TOPIC"], count=10)
        assert {r.headers["event-id"].decode() for r in records} == ids

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(30):
            while len(replaced := {c.pid for c in psutil.Process(supervisor.pid).children()} - {victim}) < 2:
                await trio.sleep(0.1)
        assert victim not in replaced
        await wait_ready(url)

        supervisor.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            assert await supervisor.wait() == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in replaced)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()


def copies_of(supervisor: trio.Process) -> set[int]:
    return {child.pid for child in psutil.Process(supervisor.pid).children()}


async def kill_all(supervisor: trio.Process, copies: set[int]) -> None:
    """What a failed test leaves: the supervisor, and the copies, which have sessions of their own."""
    if supervisor.returncode is None:
        supervisor.kill()
        await supervisor.wait()
    for pid in copies:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_signal_during_the_restart_pause_stops_everything(gateway_env: dict[str, str]) -> None:
    """SIGTERM while a dead copy waits to be started again: it is not started, and the supervisor exits 0."""
    port = free_port()
    env = {**os.environ, **gateway_env, "APPLICATION_PORT": str(port), "LOG_LEVEL": "WARNING"}
    supervisor = await trio.lowlevel.open_process(
        [sys.executable, "-c", SUPERVISOR_WITH_A_LONG_PAUSE, "--workers", "2", "--role", "application"],
        cwd=str(ROOT), env=env, stderr=subprocess.DEVNULL,
    )
    seen: set[int] = set()
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        with trio.fail_after(30):
            while len(seen := copies_of(supervisor)) < 2:
                await trio.sleep(0.1)
        victim = min(seen)
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(10):
            while victim in copies_of(supervisor):  # until it is reaped: then the pause has begun
                await trio.sleep(0.01)

        supervisor.send_signal(signal.SIGTERM)
        with trio.fail_after(RESTART_PAUSE / 2):
            assert await supervisor.wait() == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in seen)
    finally:
        await kill_all(supervisor, seen)


async def served_by(port: int, context: ssl.SSLContext) -> tuple[int, int]:
    """The pid of the copy behind a fresh TLS connection, and the serial of the certificate it served."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context, https_compatible=True)
    async with stream:
        with trio.fail_after(10):
            await stream.do_handshake()
            serial = serial_of(stream.getpeercert(binary_form=True))
            await stream.send_all(b"GET /health HTTP/1.0\r\nHost: gateway\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["pid"], serial


async def test_sighup_to_the_supervisor_reloads_the_certificate_of_every_copy(
    gateway_env: dict[str, str], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    first = pki.issue_server()  # the one the copies start with
    port = free_port()
    env = {
        **os.environ, **gateway_env, **pki.env(), "APPLICATION_PORT": str(port), "TLS_RELOAD_INTERVAL": "0",
        "LOG_LEVEL": "WARNING",
    }
    supervisor = await trio.lowlevel.open_process(
        [sys.executable, "-m", "app", "--workers", "2", "--role", "application"],
        cwd=str(ROOT), env=env, stderr=subprocess.DEVNULL,
    )
    context = pki.client_context()
    seen: set[int] = set()
    try:
        with trio.fail_after(30):
            while len(seen := copies_of(supervisor)) < 2:
                await trio.sleep(0.01)
        # The copies are starting, and have no SIGHUP handler yet: this one is not forwarded, or it would kill them.
        supervisor.send_signal(signal.SIGHUP)
        served: dict[int, int] = {}
        with trio.fail_after(60):
            while set(served) != seen:
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    pid, serial = await served_by(port, context)
                    served[pid] = serial
                    continue
                await trio.sleep(0.2)  # not listening yet
        assert set(served.values()) == {first}

        second = pki.issue_server()
        supervisor.send_signal(signal.SIGHUP)
        with trio.fail_after(30):
            while set(served.values()) != {second}:
                pid, serial = await served_by(port, context)
                served[pid] = serial
        assert set(served) == seen == copies_of(supervisor), "both copies reloaded, neither was started again"

        supervisor.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            assert await supervisor.wait() == 0
    finally:
        await kill_all(supervisor, seen)
