"""Prometheus (Debian's package, when installed) on ops/prometheus/prometheus.yml, data in ``$INFRA_DIR/prometheus``."""

from __future__ import annotations

import shutil
import signal
import time
import urllib.request

from .process import (
    LOG_TAIL_LINES,
    POLL_INTERVAL_S,
    cmdline,
    find_pid,
    log,
    pid_alive,
    signal_all,
    spawn_detached,
    tail,
    tcp_open,
    wait_exited,
    write_text,
)
from .settings import PROMETHEUS_CONFIG, REPO_ROOT, InfraError, Settings

PROMETHEUS_READY_TIMEOUT_S = 30.0
PROMETHEUS_STOP_TIMEOUT_S = 10.0


def command(binary: str, s: Settings) -> list[str]:
    """The Prometheus server of this ``INFRA_DIR``."""
    return [
        binary,
        f"--config.file={PROMETHEUS_CONFIG}",
        f"--storage.tsdb.path={s.prometheus_data}",
        f"--web.listen-address=127.0.0.1:{s.prometheus_port}",
    ]


def _is_ours(pid: int, s: Settings) -> bool:
    """True when ``pid`` is a Prometheus keeping its data in this ``INFRA_DIR`` (guards against reused pids)."""
    args = cmdline(pid)
    return args is not None and f"--storage.tsdb.path={s.prometheus_data}" in args


def prometheus_pid(s: Settings | None = None) -> int | None:
    """PID of the running Prometheus of this ``INFRA_DIR``, from its pid file or, failing that, by scanning /proc."""
    s = s or Settings.from_env()
    return find_pid(s.prometheus_pid_file, lambda pid: _is_ours(pid, s))


def ready(s: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.prometheus_port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def up(s: Settings) -> bool:
    """Start Prometheus (unless running) and wait until it serves; False when not installed or its port is taken."""
    binary = shutil.which("prometheus")
    if binary is None:
        log("prometheus not found on PATH; not starting it (apt-get install prometheus)")
        return False
    if prometheus_pid(s) is None:
        if tcp_open(s.prometheus_port):
            log(f"port 127.0.0.1:{s.prometheus_port} is in use by another process; not starting Prometheus "
                "(set PROMETHEUS_PORT)")
            return False
        s.prometheus_data.mkdir(parents=True, exist_ok=True)
        proc = spawn_detached(command(binary, s), s.prometheus_log, s.prometheus_dir)
        write_text(s.prometheus_pid_file, f"{proc.pid}\n")
        log(f"started Prometheus (pid {proc.pid}, 127.0.0.1:{s.prometheus_port})")
    deadline = time.monotonic() + PROMETHEUS_READY_TIMEOUT_S
    while not ready(s):
        if prometheus_pid(s) is None:
            raise InfraError(
                f"Prometheus exited during startup. Last {LOG_TAIL_LINES} lines of {s.prometheus_log}:\n"
                + tail(s.prometheus_log)
            )
        if time.monotonic() > deadline:
            raise InfraError(
                f"Prometheus not ready after {PROMETHEUS_READY_TIMEOUT_S:.0f}s. Last lines of {s.prometheus_log}:\n"
                + tail(s.prometheus_log)
            )
        time.sleep(POLL_INTERVAL_S)
    log(f"Prometheus ready on http://127.0.0.1:{s.prometheus_port} ({PROMETHEUS_CONFIG.relative_to(REPO_ROOT)})")
    return True


def down(s: Settings) -> None:
    """SIGTERM, SIGKILL after 10 s, when running."""
    pid = prometheus_pid(s)
    if pid is not None:
        log(f"stopping Prometheus (pid {pid})")
        signal_all([pid], signal.SIGTERM)
        if wait_exited([pid], PROMETHEUS_STOP_TIMEOUT_S):
            log(f"Prometheus did not stop within {PROMETHEUS_STOP_TIMEOUT_S:.0f}s; sending SIGKILL")
            signal_all([pid], signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    s.prometheus_pid_file.unlink(missing_ok=True)


def status_line(s: Settings, expected: bool) -> tuple[bool, str]:
    """Whether Prometheus runs and is ready, and its status line."""
    pid = prometheus_pid(s)
    is_up = pid is not None and ready(s)
    suffix = "" if expected else " (not expected)"
    line = (
        f"prometheus: {'up' if is_up else 'down'}{suffix} pid={pid or '-'} "
        f"address=127.0.0.1:{s.prometheus_port} config={PROMETHEUS_CONFIG}"
    )
    return is_up, line
