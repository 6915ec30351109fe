"""Fixtures shared by the tests.

Integration tests talk to a real Kafka broker and a real PostgreSQL. Unless
``KAFKA_BOOTSTRAP_SERVERS`` (and ``DATABASE_URL``) point at running ones, the session starts
them through ``scripts/infra.py up``, the same command as ``make infra-up``. Every gateway a
test starts gets topics of its own, so tests can run side by side on one broker.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import confluent_kafka.admin
import psycopg
import pytest
import trio

from app.config import Settings, load_settings
from app.runtime import Runtime, run
from tests.kafka_reader import KafkaReader

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Infra:
    kafka_bootstrap_servers: str
    database_url: str


# The suffixes unique_topics_env handed out in this session: its topics are deleted at the end
# (only this session's, so that sessions sharing a broker do not pull topics from under each other).
SESSION_TOPIC_SUFFIXES: set[str] = set()


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """The Kafka and PostgreSQL of the session; the tests' own topics are deleted at its end."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if not (bootstrap and database):
        # Parallel workers (pytest -n) each start a session: one at a time runs `up`, the others find it done.
        (ROOT / ".local").mkdir(exist_ok=True)
        with open(ROOT / ".local" / "infra-up.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            result = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "infra.py"), "up"],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
                timeout=600,
            )
        served = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        bootstrap = bootstrap or served["KAFKA_BOOTSTRAP_SERVERS"]
        database = database or served["DATABASE_URL"]
    yield Infra(bootstrap, database)
    delete_test_topics(bootstrap)


def delete_test_topics(bootstrap: str) -> None:
    """Left behind, thousands of test partitions would slow every later start of the broker."""
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    try:
        topics = [
            name for name in admin.list_topics(timeout=10).topics
            if any(name.endswith(suffix) or f"-{suffix}." in name for suffix in SESSION_TOPIC_SUFFIXES)
        ]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.result(timeout=60)
    except confluent_kafka.KafkaException as error:
        print(f"test topics not deleted: {error}", file=sys.stderr)


def unique_topics_env(prefix: str = "t") -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    SESSION_TOPIC_SUFFIXES.add(suffix)
    return {
        "APPLICATION_TOPIC": f"{prefix}-application-logs-{suffix}",
        "INFRASTRUCTURE_TOPIC": f"{prefix}-infrastructure-logs-{suffix}",
        "TRANSACTION_TOPIC": f"{prefix}-transaction-logs-{suffix}",
    }


def schema_url(database_url: str, schema: str) -> str:
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def database_url(infra: Infra) -> Iterator[str]:
    """The gateway database seen through a schema of this test's own, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema_url(infra.database_url, schema)
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def gateway_env(infra: Infra, database_url: str) -> dict[str, str]:
    """Environment for a gateway on free ports with topics and a database schema of its own."""
    return {
        "HOST": "127.0.0.1",
        "GATEWAY_PORT": "0",
        "APPLICATION_PORT": "0",
        "INFRASTRUCTURE_PORT": "0",
        "TRANSACTION_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers,
        "DATABASE_URL": database_url,
        "OUTBOX_POLL_INTERVAL": "0.2",
        "TOPIC_PARTITIONS": "3",
        "FLUSH_TIMEOUT": "15",
        "GRACEFUL_TIMEOUT": "2",
        "COLLECTOR_INTERVAL": "0",  # tests of the host collector turn it on
        "SYSLOG_PORT": "0",  # the socket listeners are off unless a test turns them on, on ports of its own
        "FORWARD_PORT": "0",
        "OTLP_GRPC_PORT": "0",
        **unique_topics_env(),
    }


@pytest.fixture
def settings(gateway_env: dict[str, str]) -> Settings:
    return load_settings(gateway_env)


async def wait_ready(url: str, timeout: float = 60.0) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        with trio.fail_after(timeout):
            while True:
                try:
                    response = await client.get(f"{url}/ready")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Runtime]:
    """A running gateway (all four listeners, in this process), ready, shut down gracefully after."""
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        yield runtime
        runtime.shutdown()


@pytest.fixture
def kafka(infra: Infra) -> Iterator[KafkaReader]:
    reader = KafkaReader(infra.kafka_bootstrap_servers)
    yield reader


class PrivateKafka:
    """A Kafka of one test module's own (one node or three), on other ports, for fault tests."""

    def __init__(self, directory: Path, port_base: int, nodes: int = 1, secure: bool = False) -> None:
        self.env = {**os.environ, "INFRA_DIR": str(directory), "KAFKA_PORT_BASE": str(port_base)}
        if secure:
            self.env["KAFKA_SECURE"] = "1"  # SASL_PLAINTEXT, SSL and SASL_SSL listeners; see scripts/infra.py
        self.directory = directory
        self.port_base = port_base
        self.nodes = nodes
        self.bootstrap_servers = ",".join(f"127.0.0.1:{port_base + 2 * n}" for n in range(nodes))

    def _infra(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "infra.py"), *args, "--kafka-nodes", str(self.nodes)],
            check=True, env=self.env, stdout=subprocess.DEVNULL, timeout=300,
        )

    def up(self) -> None:
        self._infra("up", "--no-postgres", "--no-prometheus")

    def down(self) -> None:
        self._infra("down", "--no-postgres")

    def kill_broker(self, node: int) -> None:
        self._infra("kill-broker", str(node))

    def start_broker(self, node: int) -> None:
        self._infra("start-broker", str(node))


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(ROOT / ".local" / "private-kafka", port_base=19092)
    kafka.up()
    yield kafka
    kafka.down()


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[PrivateKafka]:
    """Three Kafka nodes: replication factor 3, min.insync.replicas=2."""
    kafka = PrivateKafka(ROOT / ".local" / "private-cluster", port_base=19192, nodes=3)
    kafka.up()
    yield kafka
    kafka.down()
