"""What the benchmarks share: the local infrastructure, and a gateway process on free ports."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENERS = ("gateway", "application", "infrastructure", "transaction")


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


@contextlib.contextmanager
def gateway(ready: str, *infra_args: str, **env: str) -> Iterator[dict[str, int]]:
    """``make infra-up``, then ``python -m app`` on free ports (yielded by listener) until the block ends."""
    served = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "infra.py"), "up", *infra_args], check=True, capture_output=True, text=True
    ).stdout
    ports = {name: free_port() for name in LISTENERS}
    full_env = {
        **os.environ,
        **dict(line.split("=", 1) for line in served.split()),
        "LOG_LEVEL": "WARNING",
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **env,
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=full_env, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{ports[ready]}")
        yield ports
    finally:
        process.terminate()
        process.wait(timeout=60)
