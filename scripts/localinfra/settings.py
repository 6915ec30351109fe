"""Where the local infrastructure keeps its state and which ports it uses, read from the environment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
POM_FILE = REPO_ROOT / "ops" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "ops" / "kafka" / "log4j2.yaml"
PROMETHEUS_CONFIG = REPO_ROOT / "ops" / "prometheus" / "prometheus.yml"

DEFAULT_KAFKA_PORT_BASE = 9092
DEFAULT_PG_PORT = 5433
DEFAULT_PROMETHEUS_PORT = 9090

KafkaMode = Literal[1, 3]
KAFKA_MODES: tuple[KafkaMode, ...] = (1, 3)


class InfraError(Exception):
    """An expected failure with a message meant for the user (no traceback needed)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where state lives and which ports are used; see scripts/infra.py for the environment variables."""

    infra_dir: Path
    kafka_port_base: int = DEFAULT_KAFKA_PORT_BASE
    pg_port: int = DEFAULT_PG_PORT
    kafka_secure: bool = False
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``INFRA_DIR``, ``KAFKA_PORT_BASE``, ``PG_PORT``, ``KAFKA_SECURE``, ``PROMETHEUS_PORT``."""
        env = os.environ if env is None else env
        infra_dir = Path(env.get("INFRA_DIR") or REPO_ROOT / ".local").expanduser().absolute()
        return cls(
            infra_dir=infra_dir,
            kafka_port_base=env_port(env, "KAFKA_PORT_BASE", DEFAULT_KAFKA_PORT_BASE),
            pg_port=env_port(env, "PG_PORT", DEFAULT_PG_PORT),
            kafka_secure=env.get("KAFKA_SECURE", "") == "1",
            prometheus_port=env_port(env, "PROMETHEUS_PORT", DEFAULT_PROMETHEUS_PORT),
        )

    @property
    def lib_dir(self) -> Path:
        """Directory holding the broker's runtime jars."""
        return self.infra_dir / "kafka" / "lib"

    @property
    def fetch_stamp(self) -> Path:
        """Marker written after a complete ``fetch``: pom.xml hash plus the list of jars."""
        return self.lib_dir / ".fetched.json"

    @property
    def state_file(self) -> Path:
        """Which components ``up`` was asked for (used by ``status``)."""
        return self.infra_dir / "state.json"

    @property
    def env_file(self) -> Path:
        """The ``KEY=value`` lines printed by ``up``."""
        return self.infra_dir / "infra.env"

    @property
    def lock_file(self) -> Path:
        """Serialises concurrent invocations of scripts/infra.py on the same ``INFRA_DIR``."""
        return self.infra_dir / ".infra.lock"

    @property
    def tls_dir(self) -> Path:
        """The CA and broker certificate of ``KAFKA_SECURE=1``."""
        return self.infra_dir / "tls"

    def kafka_mode_dir(self, mode: KafkaMode) -> Path:
        """Top directory of one Kafka mode (``kafka-1node`` or ``kafka-3node``)."""
        return self.infra_dir / f"kafka-{mode}node"

    def cluster_id_file(self, mode: KafkaMode) -> Path:
        """File holding the KRaft cluster id of one mode."""
        return self.kafka_mode_dir(mode) / "cluster.id"

    @property
    def prometheus_dir(self) -> Path:
        """Prometheus's TSDB (``data``), pid file and log."""
        return self.infra_dir / "prometheus"

    @property
    def prometheus_data(self) -> Path:
        """``--storage.tsdb.path``; also what tells our Prometheus from others in /proc."""
        return self.prometheus_dir / "data"

    @property
    def prometheus_pid_file(self) -> Path:
        return self.prometheus_dir / "prometheus.pid"

    @property
    def prometheus_log(self) -> Path:
        """Prometheus's output of the current run."""
        return self.prometheus_dir / "prometheus.log"


def env_port(env: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port from the environment, leaving room for the ports counted from it."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise InfraError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535 - 6:
        raise InfraError(f"{name}={port} is out of range")
    return port


def check_mode(mode: int) -> KafkaMode:
    """``mode`` as a Kafka mode (1 or 3), or an :class:`InfraError`."""
    if mode == 1:
        return 1
    if mode == 3:
        return 3
    raise InfraError(f"--kafka-nodes must be 1 or 3, not {mode}")
