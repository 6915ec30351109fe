"""``INFRA_DIR`` itself: creating it, the lock that serialises invocations, and what ``up`` was asked for."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
from collections.abc import Iterator
from typing import IO

from .process import log, write_text
from .settings import KAFKA_MODES, Settings

_lock_depth = 0
_lock_fh: IO[str] | None = None


def ensure_infra_dir(s: Settings) -> None:
    """Create ``INFRA_DIR`` (mode 0755) and its .gitignore."""
    if not s.infra_dir.exists():
        s.infra_dir.mkdir(parents=True)
        s.infra_dir.chmod(0o755)
    gitignore = s.infra_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("# Local infrastructure state (scripts/infra.py); never commit.\n*\n")


@contextlib.contextmanager
def locked(s: Settings) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``$INFRA_DIR/.infra.lock`` (re-entrant within this process)."""
    global _lock_depth, _lock_fh
    if _lock_depth == 0:
        ensure_infra_dir(s)
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


@dataclasses.dataclass
class State:
    """Components requested by ``up`` (and not stopped by ``down`` since)."""

    kafka_mode: int | None = None
    postgres: bool = False
    prometheus: bool = False


def load_state(s: Settings) -> State:
    try:
        raw = json.loads(s.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return State()
    mode = raw.get("kafka_mode")
    return State(
        kafka_mode=mode if mode in KAFKA_MODES else None,
        postgres=bool(raw.get("postgres")),
        prometheus=bool(raw.get("prometheus")),
    )


def save_state(s: Settings, state: State) -> None:
    ensure_infra_dir(s)
    write_text(s.state_file, json.dumps(dataclasses.asdict(state)) + "\n")
