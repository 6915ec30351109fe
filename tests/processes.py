"""The gateway as a separate process, and a stream of transactions that retries like a client."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import httpx
import psycopg
import trio

from tests.conftest import ROOT, Infra, schema_url, unique_topics_env, wait_ready


_HANDED_OUT: set[int] = set()
# Gateway processes leave the syslog and forward listeners off unless a test gives them ports.
SOCKETS_OFF = {"SYSLOG_PORT": "0", "FORWARD_PORT": "0", "OTLP_GRPC_PORT": "0"}


def free_port() -> int:
    """A port free now and never handed out before in this session.

    The caller binds it later, so two callers could otherwise be given the same port between
    asking and binding (the kernel picks from one range for both).
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class GatewayProcess:
    """``python -m app`` on ports of its own; can be killed and started again."""

    def __init__(self, env: Mapping[str, str], log_path: str | None = None, args: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.ports = {name: free_port() for name in ("gateway", "application", "infrastructure", "transaction")}
        self.env = {
            **os.environ,
            **SOCKETS_OFF,
            **env,
            **{f"{name.upper()}_PORT": str(port) for name, port in self.ports.items()},
        }
        self.log_path = log_path
        self.process: trio.Process | None = None

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    async def start(self, ready_listener: str = "transaction") -> None:
        if self.log_path:
            with open(self.log_path, "ab") as log:
                self.process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "app", *self.args], env=self.env, cwd=str(ROOT), stderr=log, stdout=log
                )
        else:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "app", *self.args], env=self.env, cwd=str(ROOT), stderr=subprocess.DEVNULL
            )
        await wait_ready(self.url(ready_listener))

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            return await self.process.wait()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill()


class TransactionStream:
    """Sends ``total`` transactions, each with its own Idempotency-Key, retrying until answered 202.

    ``accepted`` maps each event id answered 202 to its key. Requests lost to a killed
    process or refused with 503 are sent again with the same key, as a client should.
    """

    def __init__(self, urls: list[str], total: int, workers: int = 8, pace: float = 0.0) -> None:
        self.urls = urls
        self.total = total
        self.workers = workers
        self.pace = pace  # seconds each worker waits after an answered request
        self.accepted: dict[str, str] = {}
        self.retries = 0
        self._next = 0

    def stop(self) -> None:
        """Send no new transactions; those under way still retry until answered."""
        self.total = self._next

    async def run(self, deadline: float = 240) -> None:
        with trio.fail_after(deadline):
            async with httpx.AsyncClient(timeout=10) as client:
                async with trio.open_nursery() as nursery:
                    for _ in range(self.workers):
                        nursery.start_soon(self._worker, client)

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while self._next < self.total:
            index = self._next
            self._next += 1
            key = f"stream-{index}-{uuid.uuid4().hex[:6]}"
            body = {"userId": f"user-{index % 50}", "type": "PAYMENT", "amount": f"{index + 1}.{index % 100:02d}", "currency": "EUR"}
            while True:
                url = random.choice(self.urls)
                try:
                    response = await client.post(f"{url}/api/v1/transactions", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 202:
                    self.accepted[response.json()["eventId"]] = key
                    await trio.sleep(self.pace)
                    break
                assert response is None or response.status_code == 503, response.text
                self.retries += 1
                await trio.sleep(0.05)


@dataclass
class RunningGateway:
    urls: dict[str, str]
    pid: int
    env: dict[str, str]


@contextlib.contextmanager
def running_gateway(infra: Infra, **env: str) -> Iterator[RunningGateway]:
    """A gateway process (sync, for module fixtures) with topics and a database schema of its own."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    ports = {name: free_port() for name in ("gateway", "application", "infrastructure", "transaction")}
    full_env = {
        **os.environ,
        **unique_topics_env("mod"),
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "DATABASE_URL": schema_url(infra.database_url, schema),
        "LOG_LEVEL": "WARNING",
        **SOCKETS_OFF,
        **env,
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=full_env, stderr=subprocess.DEVNULL)
    # Listeners under TLS (TLS_CERT_FILE and TLS_LISTENERS) are https; the caller trusts their CA (SSL_CERT_FILE).
    secure = full_env.get("TLS_LISTENERS", ",".join(ports)).split(",") if full_env.get("TLS_CERT_FILE") else []
    urls = {name: f"{'https' if name in secure else 'http'}://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if all(httpx.get(f"{urls[name]}/ready").status_code == 200 for name in ("gateway", "application", "transaction")):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        yield RunningGateway(urls, process.pid, full_env)
        process.terminate()
        assert process.wait(timeout=60) == 0, "the gateway exited cleanly"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with psycopg.connect(infra.database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
