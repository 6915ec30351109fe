#!/usr/bin/env python3
"""Local infrastructure for the gateway: Apache Kafka (KRaft), PostgreSQL and Prometheus on 127.0.0.1.

Standard library only: this script runs before the project's virtualenv has any packages.

Commands::

    python3 scripts/infra.py fetch                  # resolve the Kafka jars with Maven (no-op when current)
    python3 scripts/infra.py up [--kafka-nodes 1|3] [--no-postgres] [--no-kafka] [--no-prometheus]
    python3 scripts/infra.py status                 # one line per component; exit 0 when all expected are up
    python3 scripts/infra.py down [--kafka-nodes 1|3|all] [--no-postgres] [--no-kafka] [--no-prometheus]
    python3 scripts/infra.py kill-broker N [--kafka-nodes 1|3]   # SIGKILL broker N (fault tests)
    python3 scripts/infra.py start-broker N [--kafka-nodes 1|3]  # start broker N again, wait until it serves
    python3 scripts/infra.py reset                  # down + delete all data (the jars are kept)

``status`` expects the components of the last ``up`` that were not brought ``down`` since (the default stack
when nothing is), so after ``kill-broker`` it exits 1 until ``start-broker``.

``start-broker`` right after ``kill-broker`` takes about 10 s: the controller rejects the new registration
(DUPLICATE_BROKER_REGISTRATION) until the killed broker's session expires (broker.session.timeout.ms, 9 s).
A 3-node broker without a controller majority gives up and exits after 60 s.

The Kafka command-line tools are on the same classpath, e.g.
``java -cp "$INFRA_DIR/kafka/lib/*" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list``
(also ``org.apache.kafka.tools.ConsoleProducer``, ``org.apache.kafka.tools.consumer.ConsoleConsumer``).

``up`` prints only ``KEY=value`` lines on stdout (everything else goes to stderr)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
    DATABASE_URL=postgresql://gateway:gateway@127.0.0.1:5433/gateway

The same lines are written to ``$INFRA_DIR/infra.env``.

Prometheus (when ``prometheus`` is on PATH, Debian's package) runs with ``ops/prometheus/prometheus.yml``, the
file the compose stack uses too; it scrapes the listeners named in ``ops/prometheus/targets/local.json``
(127.0.0.1:8080..8083, where ``make run`` serves them), evaluates ``ops/prometheus/alerts.yml``, and keeps its
data in ``$INFRA_DIR/prometheus``. When the port is taken by another process, ``up`` says so and goes on without it.

Kafka modes: a single combined broker+controller (``--kafka-nodes 1``, data in ``$INFRA_DIR/kafka-1node``) or
three combined nodes (``--kafka-nodes 3``, data in ``$INFRA_DIR/kafka-3node/node-N``). Both modes use the same
ports, so they never run at the same time: ``up`` in one mode first stops the other mode (with a message on
stderr); the data of the stopped mode is kept.

Environment:
    INFRA_DIR        state directory (default ``<repo>/.local``); git-ignored via its own ``.gitignore``.
    KAFKA_PORT_BASE  first Kafka port (default 9092). Node N uses base+2(N-1) (PLAINTEXT) and base+2(N-1)+1
                     (CONTROLLER): 9092/9093, 9094/9095, 9096/9097.
    PG_PORT          PostgreSQL TCP port (default 5433, so a Debian default cluster on 5432 does not clash).
    PROMETHEUS_PORT  Prometheus web port (default 9090).
    KAFKA_SECURE     "1": the single node also listens with SASL_PLAINTEXT (base+10), SSL (base+11) and
                     SASL_SSL (base+12); SASL user gateway/gateway-secret with PLAIN, SCRAM-SHA-256 and
                     SCRAM-SHA-512; TLS from a CA made under $INFRA_DIR/tls (for the gateway's security tests).
    JAVA_HOME, JAVA  Java runtime (default: ``java`` on PATH).
    MVN              Maven executable (default: ``mvn`` on PATH).
    PG_BIN           PostgreSQL server binaries (default ``/usr/lib/postgresql/15/bin``, else the newest found).

Use from Python (e.g. pytest fixtures)::

    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("infra", "scripts/infra.py")
    infra = importlib.util.module_from_spec(spec); sys.modules["infra"] = infra; spec.loader.exec_module(infra)
    env = infra.up(kafka_nodes=3)            # {"KAFKA_BOOTSTRAP_SERVERS": ..., "DATABASE_URL": ...}
    infra.kill_broker(2); infra.start_broker(2)
    infra.broker_pid(1)                      # int or None

Failures raise :class:`InfraError` (the CLI prints the message and exits 1).
"""

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
POM_FILE = REPO_ROOT / "ops" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "ops" / "kafka" / "log4j2.yaml"
PROMETHEUS_CONFIG = REPO_ROOT / "ops" / "prometheus" / "prometheus.yml"

KAFKA_HEAP = "512m"
KAFKA_JVM_FLAGS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
KAFKA_MAIN_CLASS = "kafka.Kafka"
KAFKA_STARTED_MARKER = "Kafka Server started"
KAFKA_READY_TIMEOUT_S = 90.0
KAFKA_STOP_TIMEOUT_S = 30.0
KAFKA_FORMAT_TIMEOUT_S = 120.0

PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"
PG_APP_USER = "gateway"
PG_APP_PASSWORD = "gateway"
PG_APP_DATABASE = "gateway"
PG_START_TIMEOUT_S = 60
PG_READY_TIMEOUT_S = 60.0

PROMETHEUS_READY_TIMEOUT_S = 30.0
PROMETHEUS_STOP_TIMEOUT_S = 10.0

LOG_TAIL_LINES = 40
POLL_INTERVAL_S = 0.2
SLF4J_BINDINGS = (
    "log4j-slf4j-impl-",
    "log4j-slf4j2-impl-",
    "slf4j-reload4j-",
    "slf4j-log4j12-",
    "slf4j-simple-",
    "slf4j-nop-",
    "slf4j-jdk14-",
    "logback-classic-",
)

KafkaMode = Literal[1, 3]
KAFKA_MODES: tuple[KafkaMode, ...] = (1, 3)


class InfraError(Exception):
    """An expected failure with a message meant for the user (no traceback needed)."""


# --------------------------------------------------------------------------------------------------------------
# Settings and layout
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where state lives and which ports are used; see the module docstring for the environment variables."""

    infra_dir: Path
    kafka_port_base: int = 9092
    pg_port: int = 5433
    kafka_secure: bool = False
    prometheus_port: int = 9090

    @classmethod
    def from_env(cls) -> "Settings":
        """Build settings from ``INFRA_DIR``, ``KAFKA_PORT_BASE``, ``PG_PORT`` and ``PROMETHEUS_PORT``."""
        infra_dir = Path(os.environ.get("INFRA_DIR") or REPO_ROOT / ".local").expanduser().absolute()
        return cls(
            infra_dir=infra_dir,
            kafka_port_base=_env_port("KAFKA_PORT_BASE", 9092),
            pg_port=_env_port("PG_PORT", 5433),
            kafka_secure=os.environ.get("KAFKA_SECURE", "") == "1",
            prometheus_port=_env_port("PROMETHEUS_PORT", 9090),
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
        """Serialises concurrent invocations of this script on the same ``INFRA_DIR``."""
        return self.infra_dir / ".infra.lock"

    def kafka_mode_dir(self, mode: KafkaMode) -> Path:
        """Top directory of one Kafka mode (``kafka-1node`` or ``kafka-3node``)."""
        return self.infra_dir / f"kafka-{mode}node"

    def cluster_id_file(self, mode: KafkaMode) -> Path:
        """File holding the KRaft cluster id of one mode."""
        return self.kafka_mode_dir(mode) / "cluster.id"

    @property
    def pg_data(self) -> Path:
        """PostgreSQL data directory."""
        return self.infra_dir / "postgres"

    @property
    def pg_run(self) -> Path:
        """Private directory for the PostgreSQL unix socket and server log."""
        return self.infra_dir / "postgres-run"

    @property
    def pg_log(self) -> Path:
        """PostgreSQL server log (``pg_ctl -l``)."""
        return self.pg_run / "postgres.log"

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


@dataclasses.dataclass(frozen=True)
class KafkaNode:
    """One broker JVM: its id, ports and files."""

    mode: KafkaMode
    node_id: int
    broker_port: int
    controller_port: int
    dir: Path

    @property
    def name(self) -> str:
        """Human-readable name used in messages and status lines."""
        return f"kafka-{self.mode}node node {self.node_id}"

    @property
    def data_dir(self) -> Path:
        """``log.dirs`` of the broker."""
        return self.dir / "data"

    @property
    def logs_dir(self) -> Path:
        """``kafka.logs.dir`` (holds ``server.log``)."""
        return self.dir / "logs"

    @property
    def server_log(self) -> Path:
        """The broker's log4j file."""
        return self.logs_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        """The JVM's stdout/stderr of the current run (JVM errors end up here)."""
        return self.dir / "broker.out"

    @property
    def pid_file(self) -> Path:
        """PID of the broker JVM."""
        return self.dir / "broker.pid"

    @property
    def logpos_file(self) -> Path:
        """Size of ``server.log`` before the current run started; readiness is searched after it."""
        return self.dir / "broker.logpos"

    @property
    def properties_file(self) -> Path:
        """Generated ``server.properties``."""
        return self.dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the PLAINTEXT listener."""
        return f"127.0.0.1:{self.broker_port}"


def _env_port(name: str, default: int) -> int:
    """Read a TCP port from the environment, with validation."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise InfraError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535 - 6:
        raise InfraError(f"{name}={port} is out of range")
    return port


def settings() -> Settings:
    """Current settings from the environment."""
    return Settings.from_env()


def node_layout(mode: KafkaMode, s: Settings | None = None) -> list[KafkaNode]:
    """The nodes of one Kafka mode."""
    s = s or settings()
    _check_mode(mode)
    nodes = []
    for node_id in range(1, mode + 1):
        base = s.kafka_port_base + 2 * (node_id - 1)
        node_dir = s.kafka_mode_dir(mode) if mode == 1 else s.kafka_mode_dir(mode) / f"node-{node_id}"
        nodes.append(KafkaNode(mode, node_id, base, base + 1, node_dir))
    return nodes


def bootstrap_servers(mode: KafkaMode = 1, s: Settings | None = None) -> str:
    """Comma-separated ``host:port`` list of all brokers of a mode."""
    return ",".join(node.bootstrap for node in node_layout(mode, s))


def database_url(s: Settings | None = None) -> str:
    """SQLAlchemy/libpq style URL of the application database."""
    s = s or settings()
    return f"postgresql://{PG_APP_USER}:{PG_APP_PASSWORD}@127.0.0.1:{s.pg_port}/{PG_APP_DATABASE}"


def _check_mode(mode: int) -> None:
    if mode not in KAFKA_MODES:
        raise InfraError(f"--kafka-nodes must be 1 or 3, not {mode}")


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress output: always stderr, so stdout stays machine-readable."""
    print(f"[infra] {message}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> str:
    """Last ``lines`` lines of a file (from byte offset ``start``), or a note when it does not exist."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            begin = start if start <= size else 0
            fh.seek(max(begin, size - 256 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return f"({path} does not exist)"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"({path} is empty)"


def _tcp_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _write_text(path: Path, text: str) -> None:
    """Write a file atomically (write a sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _run(
    cmd: Sequence[str | Path], *, timeout: float | None = None, cwd: Path | str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with captured output (never inherits our stdout)."""
    return subprocess.run(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def _which(env_var: str, name: str, hint: str) -> str:
    """Locate an executable via an environment variable or PATH."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    found = shutil.which(name)
    if not found:
        raise InfraError(f"'{name}' not found on PATH. {hint}")
    return found


def _java() -> str:
    """The ``java`` executable (``$JAVA``, ``$JAVA_HOME/bin/java`` or PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    if not os.environ.get("JAVA") and java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return _which("JAVA", "java", "Install Java 17+ (.ci/install-system-deps.sh).")


_lock_depth = 0
_lock_fh: IO[str] | None = None


@contextlib.contextmanager
def _locked(s: Settings) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``$INFRA_DIR/.infra.lock`` (re-entrant within this process)."""
    global _lock_depth, _lock_fh
    if _lock_depth == 0:
        _ensure_infra_dir(s)
        fh = s.lock_file.open("a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another infra.py holding {s.lock_file}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        _lock_fh = fh
    _lock_depth += 1
    try:
        yield
    finally:
        _lock_depth -= 1
        if _lock_depth == 0 and _lock_fh is not None:
            fcntl.flock(_lock_fh, fcntl.LOCK_UN)
            _lock_fh.close()
            _lock_fh = None


def _ensure_infra_dir(s: Settings) -> None:
    """Create ``INFRA_DIR`` (traversable by others, so the postgres user can reach its data) and its .gitignore."""
    if not s.infra_dir.exists():
        s.infra_dir.mkdir(parents=True)
        s.infra_dir.chmod(0o755)
    gitignore = s.infra_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("# Local infrastructure state (scripts/infra.py); never commit.\n*\n")


# --------------------------------------------------------------------------------------------------------------
# State (what `up` was asked for), used by `status`
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _State:
    """Components requested by ``up`` (and not stopped by ``down`` since)."""

    kafka_mode: int | None = None
    postgres: bool = False
    prometheus: bool = False


def _load_state(s: Settings) -> _State:
    try:
        raw = json.loads(s.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return _State()
    mode = raw.get("kafka_mode")
    return _State(
        kafka_mode=mode if mode in KAFKA_MODES else None,
        postgres=bool(raw.get("postgres")),
        prometheus=bool(raw.get("prometheus")),
    )


def _save_state(s: Settings, state: _State) -> None:
    _ensure_infra_dir(s)
    _write_text(s.state_file, json.dumps(dataclasses.asdict(state)) + "\n")


# --------------------------------------------------------------------------------------------------------------
# fetch: Kafka jars from Maven Central
# --------------------------------------------------------------------------------------------------------------


def _pom_hash() -> str:
    return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()


def jars_complete(s: Settings | None = None) -> bool:
    """True when the jar directory matches the current pom.xml and every recorded jar is present."""
    s = s or settings()
    try:
        stamp = json.loads(s.fetch_stamp.read_text())
    except (FileNotFoundError, ValueError):
        return False
    jars = stamp.get("jars") or []
    return stamp.get("pom_sha256") == _pom_hash() and bool(jars) and all((s.lib_dir / j).is_file() for j in jars)


def _check_classpath(jars: Sequence[str]) -> None:
    """Exactly one slf4j-api (1.7.x) and exactly one SLF4J binding, or the broker logs nothing / warns."""
    apis = [j for j in jars if j.startswith("slf4j-api-")]
    bindings = [j for j in jars if j.startswith(SLF4J_BINDINGS)]
    if len(apis) != 1 or not apis[0].startswith("slf4j-api-1.7."):
        raise InfraError(f"expected exactly one slf4j-api 1.7.x jar, found {apis or 'none'}; fix {POM_FILE}")
    if len(bindings) != 1:
        raise InfraError(f"expected exactly one SLF4J binding, found {bindings or 'none'}; fix {POM_FILE}")


def fetch(s: Settings | None = None, force: bool = False) -> Path:
    """Copy the broker's runtime jars into ``$INFRA_DIR/kafka/lib`` with Maven, unless already complete.

    The jars are copied into a temporary directory which replaces ``lib`` only when Maven succeeded, so an
    interrupted download never leaves a half-filled classpath behind.
    """
    s = s or settings()
    if not force and jars_complete(s):
        return s.lib_dir
    with _locked(s):
        if not force and jars_complete(s):
            return s.lib_dir
        running = [n.name for mode in KAFKA_MODES for n in node_layout(mode, s) if _node_pid(n) is not None]
        if running and s.lib_dir.exists():
            raise InfraError(f"{POM_FILE} changed while brokers are running ({', '.join(running)}); run `down` first")
        mvn = _which("MVN", "mvn", "Install Maven (.ci/install-system-deps.sh).")
        partial = s.lib_dir.with_name("lib.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        log(f"fetching Kafka jars with Maven into {s.lib_dir} ...")
        started = time.monotonic()
        cmd: list[str | Path] = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            POM_FILE,
            "dependency:copy-dependencies",
            f"-Dkafka.lib.dir={partial}",
        ]
        result = _run(cmd, cwd=REPO_ROOT)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
            raise InfraError("Maven failed:\n" + "\n".join(output))
        jars = sorted(p.name for p in partial.glob("*.jar"))
        if not jars:
            raise InfraError(f"Maven copied no jars into {partial}")
        _check_classpath(jars)
        _write_text(
            partial / s.fetch_stamp.name, json.dumps({"pom_sha256": _pom_hash(), "jars": jars}, indent=1) + "\n"
        )
        shutil.rmtree(s.lib_dir, ignore_errors=True)
        partial.rename(s.lib_dir)
        log(f"fetched {len(jars)} jars in {time.monotonic() - started:.1f}s")
    return s.lib_dir


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------

# Broker JVMs started by this process, so that they can be reaped (no zombies in long-lived pytest sessions).
_children: dict[int, subprocess.Popen[bytes]] = {}
# When each broker (by node directory) was spawned by this process, for progress messages.
_spawn_times: dict[Path, float] = {}


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is a broker we started and it has exited.

    Other processes are left alone: waiting for them would steal exit codes from the code importing this module.
    """
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def _cmdline(pid: int) -> list[str] | None:
    """Arguments of a live process, or None (gone, zombie, or not readable)."""
    _reap(pid)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode("utf-8", errors="replace").split("\0")


def _pid_alive(pid: int) -> bool:
    """True until every thread of ``pid`` has exited.

    A killed multi-threaded process (a JVM) can show its main thread as a zombie while other threads still
    hold its file descriptors (and so its listening sockets); and its command line disappears even earlier.
    """
    _reap(pid)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
            return True
    return False


def _is_our_broker(pid: int, node: KafkaNode) -> bool:
    """True when ``pid`` is a broker JVM started for ``node`` (guards against reused pids)."""
    args = _cmdline(pid)
    return args is not None and KAFKA_MAIN_CLASS in args and str(node.properties_file) in args


def _read_pid(path: Path) -> int | None:
    """The integer on the first line of ``path`` (pid files, postmaster.pid), or None."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (FileNotFoundError, ValueError):
        return None


def _node_pid(node: KafkaNode) -> int | None:
    """PID of the running broker of ``node``, from its pid file or, failing that, by scanning /proc."""
    pid = _read_pid(node.pid_file)
    if pid is not None:
        child = _children.get(pid)
        if child is not None and child.poll() is None:
            return pid  # started by this process (its command line may not be readable yet)
        if _is_our_broker(pid, node):
            return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_our_broker(int(entry.name), node):
            return int(entry.name)
    return None


def broker_pid(node: int = 1, mode: int | None = None, s: Settings | None = None) -> int | None:
    """PID of broker ``node`` (1-based) of ``mode`` (default: the active mode), or None when not running."""
    s = s or settings()
    return _node_pid(_resolve_node(node, mode, s))


def _active_mode(s: Settings) -> KafkaMode:
    """The mode that is running, else the one last brought ``up``, else the single node."""
    for mode in (3, 1):
        if any(_node_pid(n) is not None for n in node_layout(mode, s)):
            return mode
    state_mode = _load_state(s).kafka_mode
    return 3 if state_mode == 3 else 1


def _resolve_node(node: int, mode: int | None, s: Settings) -> KafkaNode:
    resolved: KafkaMode
    if mode is None:
        resolved = 3 if node > 1 else _active_mode(s)
    else:
        _check_mode(mode)
        resolved = 3 if mode == 3 else 1
    nodes = node_layout(resolved, s)
    if not 1 <= node <= len(nodes):
        raise InfraError(f"node must be between 1 and {len(nodes)} in the {resolved}-node mode, not {node}")
    return nodes[node - 1]


# --------------------------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------------------------


def _server_properties(node: KafkaNode, s: Settings) -> str:
    """server.properties for one node (combined broker + controller)."""
    nodes = node_layout(node.mode, s)
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.data_dir),
        "num.partitions": 3,
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
    }
    if node.mode == 1:
        props |= {
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{node.controller_port}",
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
        }
    else:
        props |= {
            "controller.quorum.voters": ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes),
            "default.replication.factor": 3,
            "min.insync.replicas": 2,
            "offsets.topic.replication.factor": 3,
            "transaction.state.log.replication.factor": 3,
            "transaction.state.log.min.isr": 2,
            "share.coordinator.state.topic.replication.factor": 3,
            "share.coordinator.state.topic.min.isr": 2,
        }
    if s.kafka_secure:
        props |= _secure_properties(node, s)
    header = f"# Generated by scripts/infra.py for {node.name}; regenerated on every start.\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


SECURE_USER = ("gateway", "gateway-secret")


def _secure_properties(node: KafkaNode, s: Settings) -> dict[str, str | int]:
    """KAFKA_SECURE=1: SASL_PLAINTEXT (base+10), SSL (base+11) and SASL_SSL (base+12) listeners.

    SASL offers PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for the user ``gateway`` / ``gateway-secret``
    (SCRAM credentials are written when the storage is formatted). TLS uses a CA and a broker
    certificate for 127.0.0.1 made with openssl under ``$INFRA_DIR/tls`` (clients trust ``ca.pem``).
    """
    tls = _ensure_tls(s)
    port = node.broker_port
    user, password = SECURE_USER
    listeners = (
        f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{node.controller_port},"
        f"SASL_PLAINTEXT://127.0.0.1:{port + 10},SSL://127.0.0.1:{port + 11},SASL_SSL://127.0.0.1:{port + 12}"
    )
    props: dict[str, str | int] = {
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
        ),
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls / "broker-keystore.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls / "ca.pem"),
        "ssl.client.auth": "none",
    }
    for listener in ("sasl_plaintext", "sasl_ssl"):
        props[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{user}="{password}";'
        )
        for mechanism in ("scram-sha-256", "scram-sha-512"):
            props[f"listener.name.{listener}.{mechanism}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
    return props


def _ensure_tls(s: Settings) -> Path:
    """A CA and a broker certificate (SAN 127.0.0.1), made once with openssl."""
    tls = s.infra_dir / "tls"
    if (tls / "broker-keystore.pem").is_file():
        return tls
    tls.mkdir(parents=True, exist_ok=True)
    openssl = _which("OPENSSL", "openssl", "apt-get install openssl")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "3650", "-subj", "/CN=kafka-log-gateway test CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "broker.pem", "-days", "3650", "-extfile", "san.ext"],
    ]
    (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for step in steps:
        subprocess.run(step, cwd=tls, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = subprocess.run(
        [openssl, "pkcs8", "-topk8", "-nocrypt", "-in", "broker.key"], cwd=tls, check=True, capture_output=True, text=True
    ).stdout
    (tls / "broker-keystore.pem").write_text(key + (tls / "broker.pem").read_text())
    return tls


def _new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (like ``StorageTool random-uuid``)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def _cluster_id(mode: KafkaMode, s: Settings) -> str:
    """The saved cluster id of a mode; recovered from meta.properties or created when missing."""
    path = s.cluster_id_file(mode)
    with contextlib.suppress(FileNotFoundError):
        saved = path.read_text().strip()
        if saved:
            return saved
    for node in node_layout(mode, s):
        with contextlib.suppress(FileNotFoundError):
            for line in (node.data_dir / "meta.properties").read_text().splitlines():
                if line.startswith("cluster.id="):
                    cluster_id = line.split("=", 1)[1].strip()
                    _write_text(path, cluster_id + "\n")
                    return cluster_id
    cluster_id = _new_cluster_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, cluster_id + "\n")
    return cluster_id


def _is_formatted(node: KafkaNode) -> bool:
    return (node.data_dir / "meta.properties").is_file()


def _format_storage(nodes: Sequence[KafkaNode], s: Settings) -> None:
    """Run ``kafka.tools.StorageTool format`` (in parallel) on the nodes not formatted yet."""
    todo = [n for n in nodes if not _is_formatted(n)]
    if not todo:
        return
    mode = todo[0].mode
    cluster_id = _cluster_id(mode, s)
    log(f"formatting storage of {', '.join(n.name for n in todo)} (cluster id {cluster_id})")
    procs: list[tuple[KafkaNode, subprocess.Popen[str]]] = []
    for node in todo:
        cmd = [
            _java(),
            "-Xmx256m",
            "-cp",
            f"{s.lib_dir}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(node.properties_file),
        ]
        if mode == 1:
            cmd.append("--standalone")
        if s.kafka_secure:
            user, password = SECURE_USER
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                cmd += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        procs.append(
            (
                node,
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd=node.dir,
                ),
            )
        )
    errors = []
    for node, proc in procs:
        try:
            output, _ = proc.communicate(timeout=KAFKA_FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        if proc.returncode != 0 or not _is_formatted(node):
            errors.append(f"{node.name}: StorageTool format failed (exit {proc.returncode}):\n{output.strip()}")
    if errors:
        raise InfraError("\n".join(errors))


def _check_ports_free(nodes: Sequence[KafkaNode]) -> None:
    """Fail fast when a port we need is taken by some other process."""
    for node in nodes:
        for port in (node.broker_port, node.controller_port):
            if _tcp_open(port):
                raise InfraError(
                    f"port 127.0.0.1:{port} (needed by {node.name}) is already in use by another process; "
                    "stop it, or use another KAFKA_PORT_BASE and INFRA_DIR"
                )


def _spawn_detached(cmd: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a server in a session of its own (a Ctrl-C here does not reach it), output to ``log_path``."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc


def _spawn_broker(node: KafkaNode, s: Settings) -> int:
    """Start one broker JVM detached from us; returns its pid."""
    node.logs_dir.mkdir(parents=True, exist_ok=True)
    try:
        log_pos = node.server_log.stat().st_size
    except FileNotFoundError:
        log_pos = 0
    _write_text(node.logpos_file, f"{log_pos}\n")
    cmd = [
        _java(),
        f"-Xms{KAFKA_HEAP}",
        f"-Xmx{KAFKA_HEAP}",
        *KAFKA_JVM_FLAGS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={node.logs_dir}",
        "-cp",
        f"{s.lib_dir}/*",
        KAFKA_MAIN_CLASS,
        str(node.properties_file),
    ]
    proc = _spawn_detached(cmd, node.stdout_log, node.dir)
    _spawn_times[node.dir] = time.monotonic()
    _write_text(node.pid_file, f"{proc.pid}\n")
    log(f"started {node.name} (pid {proc.pid}, {node.bootstrap})")
    return proc.pid


def _log_pos(node: KafkaNode) -> int:
    return _read_pid(node.logpos_file) or 0


def _started_in_log(node: KafkaNode) -> bool:
    """True when ``Kafka Server started`` was logged by the current run of ``node``."""
    try:
        with node.server_log.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            pos = _log_pos(node)
            fh.seek(pos if pos <= size else 0)
            return KAFKA_STARTED_MARKER.encode() in fh.read(16 * 1024 * 1024)
    except FileNotFoundError:
        return False


def broker_ready(node: int = 1, mode: int | None = None, s: Settings | None = None) -> bool:
    """True when broker ``node`` runs, has logged ``Kafka Server started`` and accepts TCP connections."""
    s = s or settings()
    return _node_ready(_resolve_node(node, mode, s))


def _node_ready(node: KafkaNode) -> bool:
    return _node_pid(node) is not None and _started_in_log(node) and _tcp_open(node.broker_port)


def _wait_kafka_ready(nodes: Sequence[KafkaNode], s: Settings, timeout: float = KAFKA_READY_TIMEOUT_S) -> None:
    """Poll until every node is ready; on failure raise with the last log lines."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            if _node_pid(node) is None:
                hint = ""
                if node.mode == 3 and sum(_node_pid(n) is not None for n in node_layout(3, s)) < 2:
                    hint = " (a 3-node broker needs a controller majority: start at least two nodes)"
                raise InfraError(
                    f"{node.name} exited during startup{hint}. Last {LOG_TAIL_LINES} lines of {node.stdout_log}:\n"
                    + _tail(node.stdout_log)
                )
            if _started_in_log(node) and _tcp_open(node.broker_port):
                pending.remove(node)
                spawned = _spawn_times.pop(node.dir, None)
                since = f"{time.monotonic() - spawned:.1f}s after start" if spawned else "already running"
                log(f"{node.name} ready on {node.bootstrap} ({since})")
        if pending and time.monotonic() > deadline:
            details = "\n".join(
                f"--- {n.name}: last {LOG_TAIL_LINES} lines of {n.server_log}\n{_tail(n.server_log, start=_log_pos(n))}"
                for n in pending
            )
            raise InfraError(f"Kafka not ready after {timeout:.0f}s ({', '.join(n.name for n in pending)}):\n{details}")
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _spawn_missing(nodes: Sequence[KafkaNode], s: Settings) -> None:
    """Start the nodes that are not running (formatting their storage first if needed); does not wait."""
    to_start: list[KafkaNode] = []
    for node in nodes:
        wanted = _server_properties(node, s)
        if _node_pid(node) is not None:
            current = node.properties_file.read_text() if node.properties_file.exists() else ""
            if current != wanted:
                raise InfraError(
                    f"{node.name} is running with a different configuration "
                    "(KAFKA_PORT_BASE or INFRA_DIR changed?); run `down` first"
                )
            continue
        node.dir.mkdir(parents=True, exist_ok=True)
        _write_text(node.properties_file, wanted)
        to_start.append(node)
    if not to_start:
        return
    _check_ports_free(to_start)
    _format_storage(to_start, s)
    for node in to_start:
        _spawn_broker(node, s)


def _stop_nodes(nodes: Sequence[KafkaNode], timeout: float = KAFKA_STOP_TIMEOUT_S) -> None:
    """SIGTERM all running nodes together, wait up to ``timeout`` seconds, then SIGKILL what is left."""
    running = {node: pid for node in nodes if (pid := _node_pid(node)) is not None}
    for node, pid in running.items():
        log(f"stopping {node.name} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        running = {n: p for n, p in running.items() if _pid_alive(p)}
        if running:
            time.sleep(POLL_INTERVAL_S)
    for node, pid in running.items():
        log(f"{node.name} did not stop within {timeout:.0f}s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(running)
    for node in nodes:
        node.pid_file.unlink(missing_ok=True)


def _wait_gone(running: dict[KafkaNode, int], timeout: float = 10.0) -> None:
    """Wait until the given processes have fully exited (their ports are closed)."""
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in running.values()) or any(
        _tcp_open(port, timeout=0.2) for node in running for port in (node.broker_port, node.controller_port)
    ):
        if time.monotonic() > deadline:
            raise InfraError(f"processes or their ports still alive after SIGKILL: {sorted(running.values())}")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------------------


def _pg_bin() -> Path:
    """Directory of the PostgreSQL server binaries (initdb, pg_ctl, ...)."""
    explicit = os.environ.get("PG_BIN")
    if explicit:
        return Path(explicit)
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "pg_ctl").exists():
        return preferred
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise InfraError(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin); "
        "run .ci/install-system-deps.sh or set PG_BIN"
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_owner_cmd(cmd: Sequence[str | Path]) -> list[str]:
    """Prefix with ``runuser -u postgres --`` when we are root (the server refuses to run as root)."""
    args = [str(c) for c in cmd]
    return ["runuser", "-u", PG_OS_USER, "--", *args] if _as_root() else args


def _pg_run(cmd: Sequence[str | Path], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return _run(_pg_owner_cmd(cmd), timeout=timeout, cwd="/")


def _pg_prepare_dirs(s: Settings) -> None:
    """Create the data and run directories, owned by postgres when we are root, and check access."""
    _ensure_infra_dir(s)
    for path, mode in ((s.pg_data, 0o700), (s.pg_run, 0o700)):
        path.mkdir(exist_ok=True)
        if _as_root():
            try:
                pw = pwd.getpwnam(PG_OS_USER)
            except KeyError:
                raise InfraError(
                    f"user '{PG_OS_USER}' does not exist; install the postgresql package (.ci/install-system-deps.sh)"
                ) from None
            if path.stat().st_uid != pw.pw_uid:
                os.chown(path, pw.pw_uid, pw.pw_gid)
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    if _as_root():
        probe = _pg_run(["test", "-w", s.pg_data, "-a", "-x", s.pg_data, "-a", "-w", s.pg_run])
        if probe.returncode != 0:
            _explain_untraversable(s.pg_data)


def _explain_untraversable(target: Path) -> None:
    """Find the first ancestor the postgres user cannot enter and raise a clear error about it."""
    for parent in [*reversed(target.parents), target]:
        check = _run(["runuser", "-u", PG_OS_USER, "--", "test", "-x", str(parent)], cwd="/")
        if check.returncode != 0:
            mode = oct(parent.stat().st_mode & 0o777)
            raise InfraError(
                f"user '{PG_OS_USER}' cannot traverse {parent} (mode {mode}), so PostgreSQL cannot use {target}. "
                f"Fix with `chmod o+x {parent}`, or point INFRA_DIR somewhere reachable."
            )
    raise InfraError(f"user '{PG_OS_USER}' cannot write to {target}")


def _pg_write_owned(path: Path, text: str) -> None:
    """Write a file inside the data directory, owned like the directory."""
    _write_text(path, text)
    st = path.parent.stat()
    if _as_root():
        os.chown(path, st.st_uid, st.st_gid)
    path.chmod(0o600)


def _pg_initdb(s: Settings) -> None:
    """Initialise the cluster once and install our pg_hba.conf and settings include."""
    if (s.pg_data / "PG_VERSION").exists():
        return
    log(f"initialising PostgreSQL in {s.pg_data}")
    result = _pg_run(
        [
            _pg_bin() / "initdb",
            "-D",
            s.pg_data,
            "-U",
            PG_SUPERUSER,
            "-E",
            "UTF8",
            "--no-locale",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ],
        timeout=300,
    )
    if result.returncode != 0:
        raise InfraError(f"initdb failed (exit {result.returncode}):\n{(result.stdout + result.stderr).strip()}")
    _pg_write_owned(
        s.pg_data / "pg_hba.conf",
        (
            "# Written by scripts/infra.py.\n"
            "# TYPE  DATABASE  USER  ADDRESS        METHOD\n"
            "local   all       all                  trust\n"
            "host    all       all   127.0.0.1/32   scram-sha-256\n"
        ),
    )
    conf = s.pg_data / "postgresql.conf"
    _pg_write_owned(
        conf,
        conf.read_text() + "\n# Local settings written by scripts/infra.py on every `up`.\n"
        "include_if_exists = 'infra.conf'\n",
    )


def _pg_write_settings(s: Settings) -> None:
    """(Re)write ``infra.conf``: port, loopback only, socket in the private run directory."""
    _pg_write_owned(
        s.pg_data / "infra.conf",
        (
            "# Written by scripts/infra.py on every `up`.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {s.pg_port}\n"
            f"unix_socket_directories = '{s.pg_run}'\n"
            "fsync = on\n"
            "password_encryption = 'scram-sha-256'\n"
        ),
    )


def _pg_running_port(s: Settings) -> int | None:
    """Port of the running server from postmaster.pid, or None when it is not running."""
    if not (s.pg_data / "PG_VERSION").exists():
        return None
    if _pg_run([_pg_bin() / "pg_ctl", "-D", s.pg_data, "status"]).returncode != 0:
        return None
    try:
        return int((s.pg_data / "postmaster.pid").read_text().splitlines()[3])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def postgres_pid(s: Settings | None = None) -> int | None:
    """PID of the postmaster, or None when PostgreSQL is not running."""
    s = s or settings()
    if _pg_running_port(s) is None:
        return None
    return _read_pid(s.pg_data / "postmaster.pid")


def _pg_isready(s: Settings) -> bool:
    return (
        _run(
            [_pg_bin() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(s.pg_port), "-d", "postgres", "-t", "2"]
        ).returncode
        == 0
    )


def _psql(s: Settings, sql: str) -> str:
    """Run SQL as the superuser over the private unix socket; returns unaligned output."""
    result = _run(
        [
            _pg_bin() / "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(s.pg_run),
            "-p",
            str(s.pg_port),
            "-U",
            PG_SUPERUSER,
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        timeout=60,
    )
    if result.returncode != 0:
        raise InfraError(f"psql failed: {sql}\n{result.stderr.strip()}")
    return result.stdout.strip()


def _pg_ensure_app_db(s: Settings) -> None:
    """Create the application role and database if they do not exist yet."""
    have = _psql(
        s,
        f"SELECT (SELECT count(*) FROM pg_roles WHERE rolname = '{PG_APP_USER}') || ',' || "
        f"(SELECT count(*) FROM pg_database WHERE datname = '{PG_APP_DATABASE}')",
    )
    has_role, has_db = (part == "1" for part in have.split(","))
    if not has_role:
        log(f"creating role {PG_APP_USER}")
        _psql(s, f"CREATE ROLE {PG_APP_USER} LOGIN PASSWORD '{PG_APP_PASSWORD}'")
    if not has_db:
        log(f"creating database {PG_APP_DATABASE}")
        _psql(s, f"CREATE DATABASE {PG_APP_DATABASE} OWNER {PG_APP_USER}")


def _pg_up(s: Settings) -> None:
    """Initialise (once), start (unless running), wait for readiness, create the app role and database."""
    if len(str(s.pg_run / f".s.PGSQL.{s.pg_port}")) > 107:
        raise InfraError(f"unix socket path under {s.pg_run} is too long for PostgreSQL; use a shorter INFRA_DIR")
    _pg_prepare_dirs(s)
    _pg_initdb(s)
    running_port = _pg_running_port(s)
    if running_port is not None and running_port != s.pg_port:
        raise InfraError(
            f"PostgreSQL from {s.pg_data} is running on port {running_port}, not PG_PORT={s.pg_port}; run `down` first"
        )
    if running_port is None:
        _pg_write_settings(s)
        if _tcp_open(s.pg_port):
            raise InfraError(f"port 127.0.0.1:{s.pg_port} is already in use by another process; stop it or set PG_PORT")
        log(f"starting PostgreSQL on 127.0.0.1:{s.pg_port}")
        result = _pg_run(
            [_pg_bin() / "pg_ctl", "-D", s.pg_data, "-l", s.pg_log, "-w", "-t", str(PG_START_TIMEOUT_S), "start"],
            timeout=PG_START_TIMEOUT_S + 30,
        )
        if result.returncode != 0:
            raise InfraError(
                f"pg_ctl start failed (exit {result.returncode}): {result.stdout.strip()} "
                f"{result.stderr.strip()}\nLast {LOG_TAIL_LINES} lines of {s.pg_log}:\n{_tail(s.pg_log)}"
            )
    deadline = time.monotonic() + PG_READY_TIMEOUT_S
    while not _pg_isready(s):
        if time.monotonic() > deadline:
            raise InfraError(
                f"PostgreSQL not ready after {PG_READY_TIMEOUT_S:.0f}s. Last lines of {s.pg_log}:\n" + _tail(s.pg_log)
            )
        time.sleep(POLL_INTERVAL_S)
    _pg_ensure_app_db(s)
    log(f"PostgreSQL ready on 127.0.0.1:{s.pg_port}")


def _pg_down(s: Settings) -> None:
    """``pg_ctl stop -m fast`` when running."""
    if _pg_running_port(s) is None:
        return
    log("stopping PostgreSQL")
    result = _pg_run([_pg_bin() / "pg_ctl", "-D", s.pg_data, "stop", "-m", "fast", "-w", "-t", "60"], timeout=90)
    if result.returncode != 0:
        raise InfraError(f"pg_ctl stop failed: {result.stdout.strip()} {result.stderr.strip()}")


# --------------------------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------------------------


def _is_our_prometheus(pid: int, s: Settings) -> bool:
    """True when ``pid`` is a Prometheus keeping its data in this ``INFRA_DIR`` (guards against reused pids)."""
    args = _cmdline(pid)
    return args is not None and f"--storage.tsdb.path={s.prometheus_data}" in args


def prometheus_pid(s: Settings | None = None) -> int | None:
    """PID of the running Prometheus of this ``INFRA_DIR``, from its pid file or, failing that, by scanning /proc."""
    s = s or settings()
    pid = _read_pid(s.prometheus_pid_file)
    if pid is not None:
        child = _children.get(pid)
        if child is not None and child.poll() is None:
            return pid
        if _is_our_prometheus(pid, s):
            return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_our_prometheus(int(entry.name), s):
            return int(entry.name)
    return None


def _prometheus_ready(s: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.prometheus_port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _prometheus_up(s: Settings) -> bool:
    """Start Prometheus (unless running) and wait until it serves; False when not installed or its port is taken."""
    binary = shutil.which("prometheus")
    if binary is None:
        log("prometheus not found on PATH; not starting it (apt-get install prometheus)")
        return False
    if prometheus_pid(s) is None:
        if _tcp_open(s.prometheus_port):
            log(f"port 127.0.0.1:{s.prometheus_port} is in use by another process; not starting Prometheus "
                "(set PROMETHEUS_PORT)")
            return False
        s.prometheus_data.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary,
            f"--config.file={PROMETHEUS_CONFIG}",
            f"--storage.tsdb.path={s.prometheus_data}",
            f"--web.listen-address=127.0.0.1:{s.prometheus_port}",
        ]
        proc = _spawn_detached(cmd, s.prometheus_log, s.prometheus_dir)
        _write_text(s.prometheus_pid_file, f"{proc.pid}\n")
        log(f"started Prometheus (pid {proc.pid}, 127.0.0.1:{s.prometheus_port})")
    deadline = time.monotonic() + PROMETHEUS_READY_TIMEOUT_S
    while not _prometheus_ready(s):
        if prometheus_pid(s) is None:
            raise InfraError(
                f"Prometheus exited during startup. Last {LOG_TAIL_LINES} lines of {s.prometheus_log}:\n"
                + _tail(s.prometheus_log)
            )
        if time.monotonic() > deadline:
            raise InfraError(
                f"Prometheus not ready after {PROMETHEUS_READY_TIMEOUT_S:.0f}s. Last lines of {s.prometheus_log}:\n"
                + _tail(s.prometheus_log)
            )
        time.sleep(POLL_INTERVAL_S)
    log(f"Prometheus ready on http://127.0.0.1:{s.prometheus_port} ({PROMETHEUS_CONFIG.relative_to(REPO_ROOT)})")
    return True


def _prometheus_down(s: Settings) -> None:
    """SIGTERM, SIGKILL after 10 s, when running."""
    pid = prometheus_pid(s)
    if pid is not None:
        log(f"stopping Prometheus (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + PROMETHEUS_STOP_TIMEOUT_S
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
        if _pid_alive(pid):
            log(f"Prometheus did not stop within {PROMETHEUS_STOP_TIMEOUT_S:.0f}s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)
    s.prometheus_pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Public operations
# --------------------------------------------------------------------------------------------------------------


def up(
    kafka_nodes: int = 1,
    postgres: bool = True,
    kafka: bool = True,
    prometheus: bool = True,
    s: Settings | None = None,
) -> dict[str, str]:
    """Bring the stack up (idempotent) and return the environment for the application.

    ``kafka_nodes`` is 1 or 3; starting one Kafka mode stops the other one first (they share ports).
    Returns ``{"KAFKA_BOOTSTRAP_SERVERS": ..., "DATABASE_URL": ...}`` (keys omitted for skipped components).
    Prometheus is started too when it is installed and its port is free (see the module docstring).
    """
    s = s or settings()
    _check_mode(kafka_nodes)
    mode: KafkaMode = 3 if kafka_nodes == 3 else 1
    env: dict[str, str] = {}
    with _locked(s):
        state = _load_state(s)
        state.kafka_mode = mode if kafka else state.kafka_mode
        state.postgres = state.postgres or postgres
        _save_state(s, state)
        nodes = node_layout(mode, s)
        if kafka:
            fetch(s)
            other: KafkaMode = 1 if mode == 3 else 3
            other_nodes = node_layout(other, s)
            if any(_node_pid(n) is not None for n in other_nodes):
                log(f"stopping the {other}-node Kafka first (both modes use the same ports)")
                _stop_nodes(other_nodes)
            # The JVMs boot while PostgreSQL is being set up; readiness is awaited afterwards.
            _spawn_missing(nodes, s)
        if postgres:
            _pg_up(s)
        if kafka:
            _wait_kafka_ready(nodes, s)
            env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers(mode, s)
        if postgres:
            env["DATABASE_URL"] = database_url(s)
        if prometheus and _prometheus_up(s) and not state.prometheus:
            state.prometheus = True
            _save_state(s, state)
        _write_text(s.env_file, "".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def down(
    kafka_nodes: int | str = "all",
    postgres: bool = True,
    kafka: bool = True,
    prometheus: bool = True,
    s: Settings | None = None,
) -> None:
    """Stop brokers (SIGTERM, SIGKILL after 30 s), PostgreSQL (``pg_ctl stop -m fast``) and Prometheus. Idempotent."""
    s = s or settings()
    if kafka_nodes == "all":
        modes: list[KafkaMode] = [1, 3]
    else:
        count = int(kafka_nodes)
        _check_mode(count)
        modes = [3 if count == 3 else 1]
    if not s.infra_dir.exists():
        return
    with _locked(s):
        state = _load_state(s)
        if kafka:
            _stop_nodes([n for mode in modes for n in node_layout(mode, s)])
            if state.kafka_mode in modes:
                state.kafka_mode = None
        if postgres:
            _pg_down(s)
            state.postgres = False
        if prometheus:
            _prometheus_down(s)
            state.prometheus = False
        _save_state(s, state)


def kill_broker(node: int, s: Settings | None = None, mode: int | None = None) -> None:
    """SIGKILL broker ``node`` of the running (normally 3-node) cluster and wait until it is gone."""
    s = s or settings()
    with _locked(s):
        target = _resolve_node(node, mode, s)
        pid = _node_pid(target)
        if pid is None:
            log(f"{target.name} is not running")
            return
        log(f"killing {target.name} (pid {pid}) with SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone({target: pid})
        target.pid_file.unlink(missing_ok=True)


def start_broker(node: int, s: Settings | None = None, mode: int | None = None) -> None:
    """Start broker ``node`` again (after :func:`kill_broker`) and wait until it serves."""
    s = s or settings()
    with _locked(s):
        target = _resolve_node(node, mode, s)
        if not _is_formatted(target):
            raise InfraError(f"{target.name} has no data yet; run `up --kafka-nodes {target.mode}` first")
        other: KafkaMode = 1 if target.mode == 3 else 3
        if any(_node_pid(n) is not None for n in node_layout(other, s)):
            raise InfraError(f"the {other}-node Kafka is running; it uses the same ports")
        fetch(s)
        state = _load_state(s)
        state.kafka_mode = target.mode
        _save_state(s, state)
        _spawn_missing([target], s)
        _wait_kafka_ready([target], s)


def status(s: Settings | None = None) -> tuple[bool, list[str]]:
    """Check every component. Returns (all expected components are up, one line per component).

    Expected are the components of the last ``up`` that were not brought ``down`` since; when nothing is
    expected, the default stack (single-node Kafka and PostgreSQL) is.
    """
    s = s or settings()
    state = _load_state(s)
    if state.kafka_mode is None and not state.postgres and not state.prometheus:
        state = _State(kafka_mode=1, postgres=True)
    ok = True
    lines: list[str] = []
    for mode in KAFKA_MODES:
        expected = state.kafka_mode == mode
        for node in node_layout(mode, s):
            pid = _node_pid(node)
            if pid is None and not expected:
                continue
            if pid is None:
                word = "down"
            elif _started_in_log(node) and _tcp_open(node.broker_port):
                word = "up"
            else:
                word = "starting"
            ok = ok and (word == "up" or not expected)
            suffix = "" if expected else " (not expected)"
            lines.append(
                f"{node.name}: {word}{suffix} pid={pid or '-'} broker={node.bootstrap} "
                f"controller=127.0.0.1:{node.controller_port}"
            )
    if not any(line.startswith("kafka-") for line in lines):
        lines.append(f"kafka: down (not expected) broker=127.0.0.1:{s.kafka_port_base}")
    pg_port = _pg_running_port(s) if (s.pg_data / "PG_VERSION").exists() else None
    pg_up = pg_port is not None and _pg_isready(s)
    ok = ok and (pg_up or not state.postgres)
    suffix = "" if state.postgres else " (not expected)"
    lines.append(
        f"postgres: {'up' if pg_up else 'down'}{suffix} pid={postgres_pid(s) if pg_up else '-'} "
        f"address=127.0.0.1:{s.pg_port} data={s.pg_data}"
    )
    prom_pid = prometheus_pid(s)
    prom_up = prom_pid is not None and _prometheus_ready(s)
    ok = ok and (prom_up or not state.prometheus)
    suffix = "" if state.prometheus else " (not expected)"
    lines.append(
        f"prometheus: {'up' if prom_up else 'down'}{suffix} pid={prom_pid or '-'} "
        f"address=127.0.0.1:{s.prometheus_port} config={PROMETHEUS_CONFIG}"
    )
    return ok, lines


def reset(s: Settings | None = None) -> None:
    """``down`` everything, then delete Kafka, PostgreSQL and Prometheus data (the jars in ``kafka/lib`` are kept)."""
    s = s or settings()
    if not s.infra_dir.exists():
        return
    with _locked(s):
        down("all", s=s)
        for path in (s.kafka_mode_dir(1), s.kafka_mode_dir(3), s.pg_data, s.pg_run, s.prometheus_dir):
            if path.exists():
                log(f"deleting {path}")
                shutil.rmtree(path)
        s.state_file.unlink(missing_ok=True)
        s.env_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    lib = fetch(force=args.force)
    log(f"jars ready in {lib}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    if args.no_kafka and args.no_postgres and args.no_prometheus:
        raise InfraError("nothing to do with --no-kafka, --no-postgres and --no-prometheus")
    started = time.monotonic()
    env = up(
        kafka_nodes=args.kafka_nodes,
        postgres=not args.no_postgres,
        kafka=not args.no_kafka,
        prometheus=not args.no_prometheus,
    )
    log(f"up in {time.monotonic() - started:.1f}s")
    for key, value in env.items():
        print(f"{key}={value}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down(args.kafka_nodes, postgres=not args.no_postgres, kafka=not args.no_kafka, prometheus=not args.no_prometheus)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    ok, lines = status()
    for line in lines:
        print(line)
    return 0 if ok else 1


def _cmd_kill_broker(args: argparse.Namespace) -> int:
    kill_broker(args.node, mode=args.kafka_nodes)
    return 0


def _cmd_start_broker(args: argparse.Namespace) -> int:
    start_broker(args.node, mode=args.kafka_nodes)
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    reset()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="infra.py",
        description="Local Kafka (KRaft), PostgreSQL and Prometheus for development and tests. "
        "State lives in $INFRA_DIR (default <repo>/.local).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download the Kafka jars with Maven (no-op when up to date)")
    p.add_argument("--force", action="store_true", help="fetch again even when the jars are complete")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser(
        "up", help="start Kafka, PostgreSQL and Prometheus (idempotent); prints KEY=value lines on stdout"
    )
    p.add_argument(
        "--kafka-nodes",
        type=int,
        choices=KAFKA_MODES,
        default=1,
        help="1: combined single node; 3: three-node cluster (stops the other mode first)",
    )
    p.add_argument("--no-postgres", action="store_true", help="do not start PostgreSQL")
    p.add_argument("--no-kafka", action="store_true", help="do not start Kafka")
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("down", help="stop brokers, PostgreSQL and Prometheus (idempotent)")
    p.add_argument("--kafka-nodes", choices=("1", "3", "all"), default="all", help="which Kafka mode to stop")
    p.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL running")
    p.add_argument("--no-kafka", action="store_true", help="leave Kafka running")
    p.add_argument("--no-prometheus", action="store_true", help="leave Prometheus running")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("status", help="one line per component; exit 0 when everything expected is up")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("kill-broker", help="SIGKILL one broker of the running cluster (fault tests)")
    p.add_argument("node", type=int, help="node id (1..3)")
    p.add_argument(
        "--kafka-nodes",
        type=int,
        choices=KAFKA_MODES,
        default=None,
        help="mode of the cluster (default: the running one; 3 when N > 1)",
    )
    p.set_defaults(func=_cmd_kill_broker)

    p = sub.add_parser("start-broker", help="start one broker again and wait until it serves")
    p.add_argument("node", type=int, help="node id (1..3)")
    p.add_argument(
        "--kafka-nodes",
        type=int,
        choices=KAFKA_MODES,
        default=None,
        help="mode of the cluster (default: the running one; 3 when N > 1)",
    )
    p.set_defaults(func=_cmd_start_broker)

    p = sub.add_parser("reset", help="down, then delete all Kafka, PostgreSQL and Prometheus data (keeps the jars)")
    p.set_defaults(func=_cmd_reset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except InfraError as exc:
        print(f"infra.py {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
