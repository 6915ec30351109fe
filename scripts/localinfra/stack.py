"""The operations of scripts/infra.py over the whole stack: up, down, status, reset, and one broker's kill/start."""

from __future__ import annotations

import shutil

from . import kafka as _kafka
from . import postgres as _postgres
from . import prometheus as _prometheus
from .jars import fetch
from .process import log, write_text
from .settings import KAFKA_MODES, InfraError, Settings, check_mode
from .state import State, load_state, locked, save_state


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
    Prometheus is started too when it is installed and its port is free.
    """
    s = s or Settings.from_env()
    mode = check_mode(kafka_nodes)
    env: dict[str, str] = {}
    with locked(s):
        state = load_state(s)
        state.kafka_mode = mode if kafka else state.kafka_mode
        state.postgres = state.postgres or postgres
        save_state(s, state)
        nodes = _kafka.node_layout(mode, s)
        if kafka:
            fetch(s)
            other = _kafka.other_mode(mode)
            other_nodes = _kafka.node_layout(other, s)
            if _kafka.running(other_nodes):
                log(f"stopping the {other}-node Kafka first (both modes use the same ports)")
                _kafka.stop(other_nodes)
            # The JVMs boot while PostgreSQL is being set up; readiness is awaited afterwards.
            _kafka.spawn_missing(nodes, s)
        if postgres:
            _postgres.up(s)
        if kafka:
            _kafka.wait_ready(nodes, s)
            env["KAFKA_BOOTSTRAP_SERVERS"] = _kafka.bootstrap_servers(mode, s)
        if postgres:
            env["DATABASE_URL"] = _postgres.database_url(s)
        if prometheus and _prometheus.up(s) and not state.prometheus:
            state.prometheus = True
            save_state(s, state)
        write_text(s.env_file, "".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def down(
    kafka_nodes: int | str = "all",
    postgres: bool = True,
    kafka: bool = True,
    prometheus: bool = True,
    s: Settings | None = None,
) -> None:
    """Stop brokers (SIGTERM, SIGKILL after 30 s), PostgreSQL (``pg_ctl stop -m fast``) and Prometheus. Idempotent."""
    s = s or Settings.from_env()
    modes = _kafka.modes_to_stop(kafka_nodes)
    if not s.infra_dir.exists():
        return
    with locked(s):
        state = load_state(s)
        if kafka:
            _kafka.stop([n for mode in modes for n in _kafka.node_layout(mode, s)])
            if state.kafka_mode in modes:
                state.kafka_mode = None
        if postgres:
            _postgres.down(s)
            state.postgres = False
        if prometheus:
            _prometheus.down(s)
            state.prometheus = False
        save_state(s, state)


def broker_pid(node: int = 1, mode: int | None = None, s: Settings | None = None) -> int | None:
    """PID of broker ``node`` (1-based) of ``mode`` (default: the active mode), or None when not running."""
    s = s or Settings.from_env()
    return _kafka.node_pid(_kafka.resolve_node(node, mode, s))


def broker_ready(node: int = 1, mode: int | None = None, s: Settings | None = None) -> bool:
    """True when broker ``node`` runs, has logged ``Kafka Server started`` and accepts TCP connections."""
    s = s or Settings.from_env()
    return _kafka.node_ready(_kafka.resolve_node(node, mode, s))


def kill_broker(node: int, s: Settings | None = None, mode: int | None = None) -> None:
    """SIGKILL broker ``node`` of the running (normally 3-node) cluster and wait until it is gone."""
    s = s or Settings.from_env()
    with locked(s):
        _kafka.kill(_kafka.resolve_node(node, mode, s))


def start_broker(node: int, s: Settings | None = None, mode: int | None = None) -> None:
    """Start broker ``node`` again (after :func:`kill_broker`) and wait until it serves."""
    s = s or Settings.from_env()
    with locked(s):
        target = _kafka.resolve_node(node, mode, s)
        if not _kafka.is_formatted(target):
            raise InfraError(f"{target.name} has no data yet; run `up --kafka-nodes {target.mode}` first")
        other = _kafka.other_mode(target.mode)
        if _kafka.running(_kafka.node_layout(other, s)):
            raise InfraError(f"the {other}-node Kafka is running; it uses the same ports")
        fetch(s)
        state = load_state(s)
        state.kafka_mode = target.mode
        save_state(s, state)
        _kafka.spawn_missing([target], s)
        _kafka.wait_ready([target], s)


def _kafka_status(s: Settings, expected_mode: int | None) -> tuple[bool, list[str]]:
    ok = True
    lines: list[str] = []
    for mode in KAFKA_MODES:
        expected = expected_mode == mode
        for node in _kafka.node_layout(mode, s):
            pid = _kafka.node_pid(node)
            if pid is None and not expected:
                continue
            if pid is None:
                word = "down"
            elif _kafka.serving(node):
                word = "up"
            else:
                word = "starting"
            ok = ok and (word == "up" or not expected)
            suffix = "" if expected else " (not expected)"
            lines.append(
                f"{node.name}: {word}{suffix} pid={pid or '-'} broker={node.bootstrap} "
                f"controller=127.0.0.1:{node.controller_port}"
            )
    if not lines:
        lines.append(f"kafka: down (not expected) broker=127.0.0.1:{s.kafka_port_base}")
    return ok, lines


def status(s: Settings | None = None) -> tuple[bool, list[str]]:
    """Check every component. Returns (all expected components are up, one line per component).

    Expected are the components of the last ``up`` that were not brought ``down`` since; when nothing is
    expected, the default stack (single-node Kafka and PostgreSQL) is.
    """
    s = s or Settings.from_env()
    state = load_state(s)
    if state.kafka_mode is None and not state.postgres and not state.prometheus:
        state = State(kafka_mode=1, postgres=True)
    ok, lines = _kafka_status(s, state.kafka_mode)
    pg_up, pg_line = _postgres.status_line(s, state.postgres)
    prom_up, prom_line = _prometheus.status_line(s, state.prometheus)
    ok = ok and (pg_up or not state.postgres) and (prom_up or not state.prometheus)
    return ok, [*lines, pg_line, prom_line]


def reset(s: Settings | None = None) -> None:
    """``down`` everything, then delete Kafka, PostgreSQL and Prometheus data (the jars in ``kafka/lib`` are kept)."""
    s = s or Settings.from_env()
    if not s.infra_dir.exists():
        return
    with locked(s):
        down("all", s=s)
        for path in (*(s.kafka_mode_dir(mode) for mode in KAFKA_MODES), s.prometheus_dir):
            if path.exists():
                log(f"deleting {path}")
                shutil.rmtree(path)
        _postgres.delete_data(s)
        s.state_file.unlink(missing_ok=True)
        s.env_file.unlink(missing_ok=True)
