"""Apache Kafka in KRaft mode: one combined broker+controller, or three of them, on 127.0.0.1.

Node N of a mode listens on ``KAFKA_PORT_BASE + 2(N-1)`` (PLAINTEXT) and the port above it (CONTROLLER);
both modes use the same ports, so only one runs at a time. ``KAFKA_SECURE=1`` adds SASL_PLAINTEXT, SSL and
SASL_SSL listeners at base+10, base+11 and base+12.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from .process import (
    LOG_TAIL_LINES,
    POLL_INTERVAL_S,
    cmdline,
    find_pid,
    log,
    pid_alive,
    read_pid,
    signal_all,
    spawn_detached,
    tail,
    tcp_open,
    wait_exited,
    which,
    write_text,
)
from .settings import KAFKA_MODES, LOG4J_CONFIG, InfraError, KafkaMode, Settings, check_mode
from .state import load_state
from .tls import ensure_tls

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
KILLED_GONE_TIMEOUT_S = 10.0

SECURE_USER = ("gateway", "gateway-secret")
SECURE_PORT_OFFSETS = {"SASL_PLAINTEXT": 10, "SSL": 11, "SASL_SSL": 12}

# When each broker (by node directory) was spawned by this process, for progress messages.
_spawn_times: dict[Path, float] = {}


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


def node_layout(mode: int, s: Settings) -> list[KafkaNode]:
    """The nodes of one Kafka mode."""
    checked = check_mode(mode)
    nodes = []
    for node_id in range(1, checked + 1):
        base = s.kafka_port_base + 2 * (node_id - 1)
        top = s.kafka_mode_dir(checked)
        nodes.append(KafkaNode(checked, node_id, base, base + 1, top if checked == 1 else top / f"node-{node_id}"))
    return nodes


def bootstrap_servers(mode: int, s: Settings) -> str:
    """Comma-separated ``host:port`` list of all brokers of a mode."""
    return ",".join(node.bootstrap for node in node_layout(mode, s))


def other_mode(mode: KafkaMode) -> KafkaMode:
    """The mode that shares ``mode``'s ports."""
    return 1 if mode == 3 else 3


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


def server_properties(node: KafkaNode, nodes: Sequence[KafkaNode], tls: Path | None = None) -> str:
    """server.properties for one node (combined broker + controller) of the cluster ``nodes``.

    ``tls`` (the directory of :func:`~localinfra.tls.ensure_tls`) adds KAFKA_SECURE's listeners.
    """
    listeners = f"PLAINTEXT://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}"
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "listeners": listeners,
        "advertised.listeners": listeners,
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
    if tls is not None:
        props |= secure_properties(node, tls)
    header = f"# Generated by scripts/infra.py for {node.name}; regenerated on every start.\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


def secure_properties(node: KafkaNode, tls: Path) -> dict[str, str | int]:
    """KAFKA_SECURE=1: SASL_PLAINTEXT (base+10), SSL (base+11) and SASL_SSL (base+12) listeners.

    SASL offers PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for the user ``gateway`` / ``gateway-secret``
    (SCRAM credentials are written when the storage is formatted). TLS uses the certificates in ``tls``.
    """
    port = node.broker_port
    user, password = SECURE_USER
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{node.controller_port}," + ",".join(
        f"{protocol}://127.0.0.1:{port + offset}" for protocol, offset in SECURE_PORT_OFFSETS.items()
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


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a .properties file (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (like ``StorageTool random-uuid``)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def cluster_id(mode: KafkaMode, s: Settings) -> str:
    """The saved cluster id of a mode; recovered from meta.properties or created when missing."""
    path = s.cluster_id_file(mode)
    with contextlib.suppress(FileNotFoundError):
        saved = path.read_text().strip()
        if saved:
            return saved
    for node in node_layout(mode, s):
        with contextlib.suppress(FileNotFoundError):
            recorded = parse_properties((node.data_dir / "meta.properties").read_text()).get("cluster.id")
            if recorded:
                write_text(path, recorded + "\n")
                return recorded
    created = new_cluster_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, created + "\n")
    return created


def format_command(java: str, node: KafkaNode, lib_dir: Path, cluster: str, secure: bool) -> list[str]:
    """``kafka.tools.StorageTool format`` for one node (with SCRAM credentials when ``secure``)."""
    cmd = [java, "-Xmx256m", "-cp", f"{lib_dir}/*", "kafka.tools.StorageTool", "format", "-t", cluster,
           "-c", str(node.properties_file)]
    if node.mode == 1:
        cmd.append("--standalone")
    if secure:
        user, password = SECURE_USER
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            cmd += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    return cmd


def broker_command(java: str, node: KafkaNode, lib_dir: Path) -> list[str]:
    """The broker JVM of one node."""
    return [
        java,
        f"-Xms{KAFKA_HEAP}",
        f"-Xmx{KAFKA_HEAP}",
        *KAFKA_JVM_FLAGS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={node.logs_dir}",
        "-cp",
        f"{lib_dir}/*",
        KAFKA_MAIN_CLASS,
        str(node.properties_file),
    ]


def java(env: Mapping[str, str] | None = None) -> str:
    """The ``java`` executable (``$JAVA``, ``$JAVA_HOME/bin/java`` or PATH)."""
    env = os.environ if env is None else env
    java_home = env.get("JAVA_HOME")
    if not env.get("JAVA") and java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return which("JAVA", "java", "Install Java 17+ (.ci/install-system-deps.sh).")


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


def _is_our_broker(pid: int, node: KafkaNode) -> bool:
    """True when ``pid`` is a broker JVM started for ``node`` (guards against reused pids)."""
    args = cmdline(pid)
    return args is not None and KAFKA_MAIN_CLASS in args and str(node.properties_file) in args


def node_pid(node: KafkaNode) -> int | None:
    """PID of the running broker of ``node``, from its pid file or, failing that, by scanning /proc."""
    return find_pid(node.pid_file, lambda pid: _is_our_broker(pid, node))


def running(nodes: Sequence[KafkaNode]) -> list[KafkaNode]:
    """The nodes whose broker runs."""
    return [node for node in nodes if node_pid(node) is not None]


def active_mode(s: Settings) -> KafkaMode:
    """The mode that is running, else the one last brought ``up``, else the single node."""
    for mode in (3, 1):
        if running(node_layout(mode, s)):
            return mode
    return 3 if load_state(s).kafka_mode == 3 else 1


def resolve_node(node: int, mode: int | None, s: Settings) -> KafkaNode:
    """Node ``node`` (1-based) of ``mode``; without a mode, of the 3-node cluster when N > 1, else the active one."""
    resolved: KafkaMode = (3 if node > 1 else active_mode(s)) if mode is None else check_mode(mode)
    nodes = node_layout(resolved, s)
    if not 1 <= node <= len(nodes):
        raise InfraError(f"node must be between 1 and {len(nodes)} in the {resolved}-node mode, not {node}")
    return nodes[node - 1]


def is_formatted(node: KafkaNode) -> bool:
    return (node.data_dir / "meta.properties").is_file()


def _format_storage(nodes: Sequence[KafkaNode], s: Settings) -> None:
    """Run ``kafka.tools.StorageTool format`` (in parallel) on the nodes not formatted yet."""
    todo = [n for n in nodes if not is_formatted(n)]
    if not todo:
        return
    cluster = cluster_id(todo[0].mode, s)
    log(f"formatting storage of {', '.join(n.name for n in todo)} (cluster id {cluster})")
    executable = java()
    procs = [
        (
            node,
            subprocess.Popen(
                format_command(executable, node, s.lib_dir, cluster, s.kafka_secure),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=node.dir,
            ),
        )
        for node in todo
    ]
    errors = []
    for node, proc in procs:
        try:
            output, _ = proc.communicate(timeout=KAFKA_FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        if proc.returncode != 0 or not is_formatted(node):
            errors.append(f"{node.name}: StorageTool format failed (exit {proc.returncode}):\n{output.strip()}")
    if errors:
        raise InfraError("\n".join(errors))


def _check_ports_free(nodes: Sequence[KafkaNode]) -> None:
    """Fail fast when a port we need is taken by some other process."""
    for node in nodes:
        for port in (node.broker_port, node.controller_port):
            if tcp_open(port):
                raise InfraError(
                    f"port 127.0.0.1:{port} (needed by {node.name}) is already in use by another process; "
                    "stop it, or use another KAFKA_PORT_BASE and INFRA_DIR"
                )


def _spawn_broker(node: KafkaNode, s: Settings) -> int:
    """Start one broker JVM detached from us; returns its pid."""
    node.logs_dir.mkdir(parents=True, exist_ok=True)
    try:
        log_pos = node.server_log.stat().st_size
    except FileNotFoundError:
        log_pos = 0
    write_text(node.logpos_file, f"{log_pos}\n")
    proc = spawn_detached(broker_command(java(), node, s.lib_dir), node.stdout_log, node.dir)
    _spawn_times[node.dir] = time.monotonic()
    write_text(node.pid_file, f"{proc.pid}\n")
    log(f"started {node.name} (pid {proc.pid}, {node.bootstrap})")
    return proc.pid


def _log_pos(node: KafkaNode) -> int:
    return read_pid(node.logpos_file) or 0


def started_in_log(node: KafkaNode) -> bool:
    """True when ``Kafka Server started`` was logged by the current run of ``node``."""
    try:
        with node.server_log.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            pos = _log_pos(node)
            fh.seek(pos if pos <= size else 0)
            return KAFKA_STARTED_MARKER.encode() in fh.read(16 * 1024 * 1024)
    except FileNotFoundError:
        return False


def serving(node: KafkaNode) -> bool:
    """True when the current run has logged ``Kafka Server started`` and the broker accepts TCP connections."""
    return started_in_log(node) and tcp_open(node.broker_port)


def node_ready(node: KafkaNode) -> bool:
    """True when the broker runs and serves."""
    return node_pid(node) is not None and serving(node)


def wait_ready(nodes: Sequence[KafkaNode], s: Settings, timeout: float = KAFKA_READY_TIMEOUT_S) -> None:
    """Poll until every node is ready; on failure raise with the last log lines."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            if node_pid(node) is None:
                hint = ""
                if node.mode == 3 and len(running(node_layout(3, s))) < 2:
                    hint = " (a 3-node broker needs a controller majority: start at least two nodes)"
                raise InfraError(
                    f"{node.name} exited during startup{hint}. Last {LOG_TAIL_LINES} lines of {node.stdout_log}:\n"
                    + tail(node.stdout_log)
                )
            if serving(node):
                pending.remove(node)
                spawned = _spawn_times.pop(node.dir, None)
                since = f"{time.monotonic() - spawned:.1f}s after start" if spawned else "already running"
                log(f"{node.name} ready on {node.bootstrap} ({since})")
        if pending and time.monotonic() > deadline:
            details = "\n".join(
                f"--- {n.name}: last {LOG_TAIL_LINES} lines of {n.server_log}\n{tail(n.server_log, start=_log_pos(n))}"
                for n in pending
            )
            raise InfraError(f"Kafka not ready after {timeout:.0f}s ({', '.join(n.name for n in pending)}):\n{details}")
        if pending:
            time.sleep(POLL_INTERVAL_S)


def spawn_missing(nodes: Sequence[KafkaNode], s: Settings) -> None:
    """Start the nodes that are not running (formatting their storage first if needed); does not wait."""
    tls = ensure_tls(s) if s.kafka_secure else None
    cluster = node_layout(nodes[0].mode, s) if nodes else []
    to_start: list[KafkaNode] = []
    for node in nodes:
        wanted = server_properties(node, cluster, tls)
        if node_pid(node) is not None:
            current = node.properties_file.read_text() if node.properties_file.exists() else ""
            if current != wanted:
                raise InfraError(
                    f"{node.name} is running with a different configuration "
                    "(KAFKA_PORT_BASE or INFRA_DIR changed?); run `down` first"
                )
            continue
        node.dir.mkdir(parents=True, exist_ok=True)
        write_text(node.properties_file, wanted)
        to_start.append(node)
    if not to_start:
        return
    _check_ports_free(to_start)
    _format_storage(to_start, s)
    for node in to_start:
        _spawn_broker(node, s)


def stop(nodes: Sequence[KafkaNode], timeout: float = KAFKA_STOP_TIMEOUT_S) -> None:
    """SIGTERM all running nodes together, wait up to ``timeout`` seconds, then SIGKILL what is left."""
    pids = {node: pid for node in nodes if (pid := node_pid(node)) is not None}
    for node, pid in pids.items():
        log(f"stopping {node.name} (pid {pid})")
    signal_all(pids.values(), signal.SIGTERM)
    alive = set(wait_exited(pids.values(), timeout))
    left = {node: pid for node, pid in pids.items() if pid in alive}
    for node, pid in left.items():
        log(f"{node.name} did not stop within {timeout:.0f}s; sending SIGKILL")
    signal_all(left.values(), signal.SIGKILL)
    wait_gone(left)
    for node in nodes:
        node.pid_file.unlink(missing_ok=True)


def kill(node: KafkaNode) -> None:
    """SIGKILL the broker of ``node`` and wait until it is gone (its ports closed)."""
    pid = node_pid(node)
    if pid is None:
        log(f"{node.name} is not running")
        return
    log(f"killing {node.name} (pid {pid}) with SIGKILL")
    signal_all([pid], signal.SIGKILL)
    wait_gone({node: pid})
    node.pid_file.unlink(missing_ok=True)


def wait_gone(pids: Mapping[KafkaNode, int], timeout: float = KILLED_GONE_TIMEOUT_S) -> None:
    """Wait until the given processes have fully exited (their ports are closed)."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids.values()) or any(
        tcp_open(port, timeout=0.2) for node in pids for port in (node.broker_port, node.controller_port)
    ):
        if time.monotonic() > deadline:
            raise InfraError(f"processes or their ports still alive after SIGKILL: {sorted(pids.values())}")
        time.sleep(0.05)


def modes_to_stop(kafka_nodes: int | str) -> list[KafkaMode]:
    """The modes ``down --kafka-nodes`` names: ``all`` is both."""
    if kafka_nodes == "all":
        return list(KAFKA_MODES)
    return [check_mode(int(kafka_nodes))]
