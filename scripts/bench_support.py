"""What the benchmarks share: the local infrastructure, a gateway process on free ports, and the one
percentile every benchmark reports."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENERS = ("gateway", "application", "infrastructure", "transaction")
# The syslog and forward socket listeners stay off unless a bench gives them ports: on their default
# ports, two gateways at once (a baseline beside this code, or another engineer's) would collide.
SOCKETS_OFF = {"SYSLOG_PORT": "0", "FORWARD_PORT": "0", "OTLP_GRPC_PORT": "0"}


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (q from 0 to 1: 0.99 for p99): the smallest value with
    at least a share ``q`` of them at or below it. Always a value measured, never one interpolated
    between two; any order; NaN for no values, so a table shows the gap instead of a run stopping."""
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is from 0 to 1, not {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = math.ceil(round(q * len(ordered), 6))  # the rounding undoes float error: 0.07 * 100 is 7.000000000000001
    return ordered[max(rank, 1) - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway at {url} did not become ready")


def infra_up(*infra_args: str) -> dict[str, str]:
    """``make infra-up`` (idempotent); the settings it serves, e.g. KAFKA_BOOTSTRAP_SERVERS."""
    served = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "infra.py"), "up", *infra_args], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in served.split())


def app_command(args: Sequence[str] = ()) -> list[str]:
    """``python -m app [args]`` with this interpreter (the venv's: a baseline tree needs the same dependencies)."""
    return [sys.executable, "-m", "app", *args]


def app_env(root: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``root`` first on PYTHONPATH, so ``python -m app`` (and its ``--workers`` copies) import
    the ``app`` package of that tree, not the one the venv's editable install points at."""
    path = [str(root), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


@contextlib.contextmanager
def gateway_process(
    ready: str, *infra_args: str, args: Sequence[str] = (), root: Path = ROOT, **env: str
) -> Iterator[tuple[dict[str, int], subprocess.Popen[bytes]]]:
    """:func:`gateway`, also yielding the process (for its memory and CPU); ``root`` is the source tree
    it runs from (its working directory and first on PYTHONPATH): this one, or a baseline's worktree."""
    ports = {name: free_port() for name in LISTENERS}
    full_env = {
        **os.environ,
        **infra_up(*infra_args),
        "LOG_LEVEL": "WARNING",
        **SOCKETS_OFF,
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **env,
    }
    process = subprocess.Popen(app_command(args), cwd=root, env=app_env(root, full_env), stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{ports[ready]}")
        yield ports, process
    finally:
        process.terminate()
        process.wait(timeout=60)


@contextlib.contextmanager
def gateway(
    ready: str, *infra_args: str, args: Sequence[str] = (), root: Path = ROOT, **env: str
) -> Iterator[dict[str, int]]:
    """``make infra-up``, then ``python -m app [args]`` on free ports (yielded by listener) until the block ends."""
    with gateway_process(ready, *infra_args, args=args, root=root, **env) as (ports, _):
        yield ports


def require_hey() -> None:
    if shutil.which("hey") is None:
        raise SystemExit("hey is missing: apt-get install hey (or bash .ci/install-system-deps.sh --bench)")


def hey(
    url: str, body_file: str, seconds: float, extra: list[str],
    content_type: str = "application/json", accepted: str = "202",
) -> dict[str, float]:
    """One ``hey`` run: requests/s, p50 and p99 in ms, ``accepted`` answers (202) and other answers."""
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-m", "POST", "-T", content_type, "-D", body_file, *extra, url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"hey printed no Requests/sec:\n{out}")
    result = {"rps": float(rps.group(1))}
    for q in ("50", "99"):
        match = re.search(rf"{q}% in ([\d.]+) secs", out)
        result[f"p{q}"] = float(match.group(1)) * 1000 if match else float("nan")
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    result["ok"] = float(codes.get(accepted, 0))
    result["other"] = float(sum(int(v) for k, v in codes.items() if k != accepted))
    result.update({f"status {k}": float(v) for k, v in codes.items() if k != accepted})
    # Requests that got no answer at all (timeouts, resets), which hey lists apart from the status codes.
    errors = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    result["failed"] = float(sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", errors, re.MULTILINE)))
    return result
