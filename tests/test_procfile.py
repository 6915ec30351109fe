"""The Procfile: it parses, and honcho runs the roles as processes that work together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ROOT, wait_ready
from tests.kafka_reader import KafkaReader
from tests.processes import free_port

HONCHO = str(Path(sys.executable).parent / "honcho")
ROLES = ["gateway", "application", "infrastructure", "transaction"]


def test_the_procfile_has_an_entry_per_role_and_one_for_a_single_process() -> None:
    check = subprocess.run([HONCHO, "check"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "Valid procfile detected (gateway, application, infrastructure, transaction, all)" in check.stderr
    entries = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")
    )
    assert {name: command.strip() for name, command in entries.items()} == {
        **{role: f"python -m app --role {role}" for role in ROLES},
        "all": "python -m app",
    }


@pytest.mark.integration
async def test_honcho_runs_the_roles_apart_and_a_log_reaches_kafka(
    gateway_env: dict[str, str], kafka: KafkaReader, tmp_path: Path
) -> None:
    ports = {role: free_port() for role in ROLES}
    env = {
        **os.environ,
        **gateway_env,
        **{f"{role.upper()}_PORT": str(port) for role, port in ports.items()},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "honcho.log").open("wb")
    honcho = await trio.lowlevel.open_process(
        [HONCHO, "start", *ROLES], cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        for port in ports.values():  # every role's process comes up ready (or this times out)
            await wait_ready(f"http://127.0.0.1:{port}", timeout=90)
        async with httpx.AsyncClient(base_url=gateway) as client:
            answer = await client.post("/api/v1/logs", json={"source": "procfile", "level": "INFO", "message": "hello"})
        assert answer.status_code == 202, answer.text
        records = await kafka.read(gateway_env["APPLICATION_TOPIC"], count=1, settle=0.5)
        assert [r.headers["event-id"].decode() for r in records] == [answer.json()["eventId"]]
        served = httpx.get(f"http://127.0.0.1:{ports['application']}/metrics").text
        assert 'http_requests_total{listener="application",route="/api/v1/logs",status="202"} 1.0' in served, (
            "the separately running application shipper took the log"
        )
    finally:
        honcho.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await honcho.wait()
        log.close()
    output = (tmp_path / "honcho.log").read_text()
    for role in ROLES:
        assert f"{role}.1" in output, output[-2000:]
