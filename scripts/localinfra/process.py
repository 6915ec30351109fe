"""What every component shares: progress output, commands, detached servers, pids and /proc, TCP probes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .settings import InfraError

LOG_TAIL_LINES = 40
POLL_INTERVAL_S = 0.2

# Servers started by this process, so that they can be reaped (no zombies in long-lived pytest sessions).
_children: dict[int, subprocess.Popen[bytes]] = {}


def log(message: str) -> None:
    """Progress output: always stderr, so stdout stays machine-readable."""
    print(f"[infra] {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> str:
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


def tcp_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (write a sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(
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


def which(env_var: str, name: str, hint: str) -> str:
    """Locate an executable via an environment variable or PATH."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    found = shutil.which(name)
    if not found:
        raise InfraError(f"'{name}' not found on PATH. {hint}")
    return found


def spawn_detached(cmd: Sequence[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a server in a session of its own (a Ctrl-C here does not reach it), output to ``log_path``."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc


def started_here(pid: int) -> bool:
    """True when ``pid`` is a server this process started and it still runs (its /proc entry may lag)."""
    child = _children.get(pid)
    return child is not None and child.poll() is None


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is a server we started and it has exited.

    Other processes are left alone: waiting for them would steal exit codes from the code importing this package.
    """
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def cmdline(pid: int) -> list[str] | None:
    """Arguments of a live process, or None (gone, zombie, or not readable)."""
    _reap(pid)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode("utf-8", errors="replace").split("\0")


def pid_alive(pid: int) -> bool:
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


def read_pid(path: Path) -> int | None:
    """The integer on the first line of ``path`` (pid files, postmaster.pid), or None."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (FileNotFoundError, ValueError):
        return None


def find_pid(pid_file: Path, is_ours: Callable[[int], bool]) -> int | None:
    """The server's pid from its pid file or, failing that (a lost or stale file), by scanning /proc."""
    pid = read_pid(pid_file)
    if pid is not None and (started_here(pid) or is_ours(pid)):
        return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and is_ours(int(entry.name)):
            return int(entry.name)
    return None


def signal_all(pids: Iterable[int], signum: signal.Signals) -> None:
    """Send ``signum`` to each process that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def wait_exited(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for the processes to exit; those still alive."""
    alive = list(pids)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        if alive:
            time.sleep(POLL_INTERVAL_S)
    return alive
