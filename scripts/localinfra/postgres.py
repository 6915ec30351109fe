"""PostgreSQL on 127.0.0.1:``PG_PORT``: one cluster per ``INFRA_DIR``, with the gateway's role and database.

The server refuses to run as root, so for root it runs as the ``postgres`` user, who must reach its data
directory, socket directory and log. A checkout in a folder only root may enter (``/root/...``, any
``mktemp -d``) would keep it out, so for root these live outside ``INFRA_DIR``: in
``<postgres's home>/kafka-log-gateway/<hash of INFRA_DIR>/`` (``/var/lib/postgresql`` on Debian; ``/var/tmp``
when that user has no home of its own), owned by postgres. A file ``infra-dir`` there names the
``INFRA_DIR`` it belongs to; ``up`` deletes such a directory once that ``INFRA_DIR`` is gone and its server is
stopped (a thrown-away clone's). A cluster an earlier version made inside ``INFRA_DIR`` stays where it is.
Other users run the server themselves, with everything under ``INFRA_DIR``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .process import LOG_TAIL_LINES, POLL_INTERVAL_S, log, pid_alive, read_pid, run, tail, tcp_open, write_text
from .settings import InfraError, Settings
from .state import ensure_infra_dir

PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"
PG_APP_USER = "gateway"
PG_APP_PASSWORD = "gateway"
PG_APP_DATABASE = "gateway"
PG_START_TIMEOUT_S = 60
PG_READY_TIMEOUT_S = 60.0
# Longest unix socket path PostgreSQL accepts (sun_path is 108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107

OUTSIDE_GROUP = "kafka-log-gateway"
FALLBACK_BASE = Path("/var/tmp")
OWNER_FILE = "infra-dir"


@dataclasses.dataclass(frozen=True)
class PostgresLayout:
    """Where one cluster keeps what its server touches: ``postgres`` (data) and ``postgres-run`` (socket, log)."""

    root: Path
    infra_dir: Path

    @property
    def outside(self) -> bool:
        """True when the cluster lives outside ``INFRA_DIR`` (root's, see the module docstring)."""
        return self.root != self.infra_dir

    @property
    def data(self) -> Path:
        """PostgreSQL data directory."""
        return self.root / "postgres"

    @property
    def run(self) -> Path:
        """Private directory for the PostgreSQL unix socket and server log."""
        return self.root / "postgres-run"

    @property
    def log(self) -> Path:
        """PostgreSQL server log (``pg_ctl -l``)."""
        return self.run / "postgres.log"

    @property
    def owner_file(self) -> Path:
        """Names the ``INFRA_DIR`` an outside directory belongs to."""
        return self.root / OWNER_FILE

    def socket(self, port: int) -> Path:
        return self.run / f".s.PGSQL.{port}"


def outside_root(infra_dir: Path, base: Path) -> Path:
    """The directory of ``infra_dir``'s cluster under ``base``: each ``INFRA_DIR`` (each checkout) has its own."""
    digest = hashlib.sha256(str(infra_dir.resolve()).encode()).hexdigest()[:16]
    return base / OUTSIDE_GROUP / digest


def choose_root(infra_dir: Path, *, as_root: bool, server_home: Path | None) -> Path:
    """Where the cluster of ``infra_dir`` lives: see the module docstring."""
    if not as_root or (infra_dir / "postgres" / "PG_VERSION").exists():
        return infra_dir
    return outside_root(infra_dir, server_home or FALLBACK_BASE)


def _as_root() -> bool:
    return os.geteuid() == 0


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise InfraError(
            f"user '{PG_OS_USER}' does not exist; install the postgresql package (.ci/install-system-deps.sh)"
        ) from None


def server_home() -> Path | None:
    """The postgres user's home when it is a directory of that user's (Debian: ``/var/lib/postgresql``)."""
    try:
        user = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        return None
    home = Path(user.pw_dir)
    try:
        st = home.lstat()
    except OSError:
        return None
    return home if stat.S_ISDIR(st.st_mode) and st.st_uid == user.pw_uid else None


def layout(s: Settings | None = None) -> PostgresLayout:
    """The cluster's directories for the current user."""
    s = s or Settings.from_env()
    as_root = _as_root()
    root = choose_root(s.infra_dir, as_root=as_root, server_home=server_home() if as_root else None)
    return PostgresLayout(root, s.infra_dir)


def database_url(s: Settings | None = None) -> str:
    """SQLAlchemy/libpq style URL of the application database."""
    s = s or Settings.from_env()
    return f"postgresql://{PG_APP_USER}:{PG_APP_PASSWORD}@127.0.0.1:{s.pg_port}/{PG_APP_DATABASE}"


def pg_bin() -> Path:
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


def as_server_user(cmd: Sequence[str | Path], as_root: bool) -> list[str]:
    """Prefix with ``runuser -u postgres --`` when we are root (the server refuses to run as root)."""
    args = [str(c) for c in cmd]
    return ["runuser", "-u", PG_OS_USER, "--", *args] if as_root else args


def _pg_run(cmd: Sequence[str | Path], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return run(as_server_user(cmd, _as_root()), timeout=timeout, cwd="/")


# --------------------------------------------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------------------------------------------


def _real_directory(path: Path, owners: set[int]) -> None:
    """``path`` is a directory (not a symlink) owned by one of ``owners``, or an :class:`InfraError`."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners:
        raise InfraError(f"{path} is not a directory owned by root or {PG_OS_USER}; move it away")


def _prepare_outside(pg: PostgresLayout, user: pwd.struct_passwd) -> None:
    """Create the outside directory (its group directory too), owned by postgres, and record its ``INFRA_DIR``."""
    group = pg.root.parent
    for path, mode, owner in ((group, 0o755, 0), (pg.root, 0o700, user.pw_uid)):
        if not os.path.lexists(path):
            path.mkdir(mode=mode)
        _real_directory(path, {0, user.pw_uid})
        if path.stat().st_uid != owner:
            os.chown(path, owner, user.pw_gid if owner else 0)
        path.chmod(mode)
    if not pg.owner_file.exists():
        write_text(pg.owner_file, f"{pg.infra_dir}\n")


def _cluster_running(root: Path) -> bool:
    pid = read_pid(root / "postgres" / "postmaster.pid")
    return pid is not None and pid_alive(pid)


def abandoned(group: Path, keep: Path) -> list[Path]:
    """Outside directories under ``group`` whose ``INFRA_DIR`` is gone and whose server is stopped."""
    found = []
    for root in sorted(group.iterdir()) if group.is_dir() else []:
        try:
            owner = (root / OWNER_FILE).read_text().strip()
        except OSError:
            continue  # not one of ours, or still being made
        if root != keep and owner and not Path(owner).exists() and not _cluster_running(root):
            found.append(root)
    return found


def _forget_abandoned(pg: PostgresLayout) -> None:
    for root in abandoned(pg.root.parent, keep=pg.root):
        owner = (root / OWNER_FILE).read_text().strip()
        log(f"deleting {root}: the PostgreSQL cluster of {owner}, which no longer exists")
        shutil.rmtree(root, ignore_errors=True)


def _prepare_dirs(pg: PostgresLayout, s: Settings) -> None:
    """Create the data and run directories, owned by postgres when we are root, and check access."""
    ensure_infra_dir(s)
    as_root = _as_root()
    user = _server_user() if as_root else None
    if user is not None and pg.outside:
        pg.root.parent.parent.mkdir(parents=True, exist_ok=True)
        _prepare_outside(pg, user)
        _forget_abandoned(pg)
    for path in (pg.data, pg.run):
        path.mkdir(exist_ok=True)
        if user is not None and path.stat().st_uid != user.pw_uid:
            os.chown(path, user.pw_uid, user.pw_gid)
        if path.stat().st_mode & 0o777 != 0o700:
            path.chmod(0o700)
    if as_root:
        probe = _pg_run(["test", "-w", pg.data, "-a", "-x", pg.data, "-a", "-w", pg.run])
        if probe.returncode != 0:
            _explain_untraversable(pg.data)


def _explain_untraversable(target: Path) -> None:
    """Find the first ancestor the postgres user cannot enter and raise a clear error about it."""
    for parent in [*reversed(target.parents), target]:
        check = run(["runuser", "-u", PG_OS_USER, "--", "test", "-x", str(parent)], cwd="/")
        if check.returncode != 0:
            mode = oct(parent.stat().st_mode & 0o777)
            raise InfraError(
                f"user '{PG_OS_USER}' cannot traverse {parent} (mode {mode}), so PostgreSQL cannot use {target}. "
                f"Fix with `chmod o+x {parent}`, or `reset` (deletes its data) so that `up` makes a new cluster "
                "where that user can reach it."
            )
    raise InfraError(f"user '{PG_OS_USER}' cannot write to {target}")


def _write_owned(path: Path, text: str) -> None:
    """Write a file inside the data directory, owned like the directory."""
    write_text(path, text)
    st = path.parent.stat()
    if _as_root():
        os.chown(path, st.st_uid, st.st_gid)
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------

PG_HBA = (
    "# Written by scripts/infra.py.\n"
    "# TYPE  DATABASE  USER  ADDRESS        METHOD\n"
    "local   all       all                  trust\n"
    "host    all       all   127.0.0.1/32   scram-sha-256\n"
)
INCLUDE_SETTINGS = "\n# Local settings written by scripts/infra.py on every `up`.\ninclude_if_exists = 'infra.conf'\n"


def settings_file(pg: PostgresLayout, port: int) -> str:
    """``infra.conf``: the port, loopback only, the socket in the private run directory."""
    return (
        "# Written by scripts/infra.py on every `up`.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {port}\n"
        f"unix_socket_directories = '{pg.run}'\n"
        "fsync = on\n"
        "password_encryption = 'scram-sha-256'\n"
    )


def _initdb(pg: PostgresLayout) -> None:
    """Initialise the cluster once and install our pg_hba.conf and settings include."""
    if (pg.data / "PG_VERSION").exists():
        return
    log(f"initialising PostgreSQL in {pg.data}")
    result = _pg_run(
        [
            pg_bin() / "initdb",
            "-D",
            pg.data,
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
    _write_owned(pg.data / "pg_hba.conf", PG_HBA)
    conf = pg.data / "postgresql.conf"
    _write_owned(conf, conf.read_text() + INCLUDE_SETTINGS)


# --------------------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------------------


def _running_port(pg: PostgresLayout) -> int | None:
    """Port of the running server from postmaster.pid, or None when it is not running."""
    if not (pg.data / "PG_VERSION").exists():
        return None
    if _pg_run([pg_bin() / "pg_ctl", "-D", pg.data, "status"]).returncode != 0:
        return None
    try:
        return int((pg.data / "postmaster.pid").read_text().splitlines()[3])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def postgres_pid(s: Settings | None = None) -> int | None:
    """PID of the postmaster, or None when PostgreSQL is not running."""
    pg = layout(s)
    if _running_port(pg) is None:
        return None
    return read_pid(pg.data / "postmaster.pid")


def _isready(s: Settings) -> bool:
    cmd: list[str | Path] = [
        pg_bin() / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(s.pg_port), "-d", "postgres", "-t", "2"
    ]
    return run(cmd).returncode == 0


def _psql(pg: PostgresLayout, s: Settings, sql: str) -> str:
    """Run SQL as the superuser over the private unix socket; returns unaligned output."""
    result = run(
        [
            pg_bin() / "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(pg.run),
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


def _ensure_app_db(pg: PostgresLayout, s: Settings) -> None:
    """Create the application role and database if they do not exist yet."""
    have = _psql(
        pg,
        s,
        f"SELECT (SELECT count(*) FROM pg_roles WHERE rolname = '{PG_APP_USER}') || ',' || "
        f"(SELECT count(*) FROM pg_database WHERE datname = '{PG_APP_DATABASE}')",
    )
    has_role, has_db = (part == "1" for part in have.split(","))
    if not has_role:
        log(f"creating role {PG_APP_USER}")
        _psql(pg, s, f"CREATE ROLE {PG_APP_USER} LOGIN PASSWORD '{PG_APP_PASSWORD}'")
    if not has_db:
        log(f"creating database {PG_APP_DATABASE}")
        _psql(pg, s, f"CREATE DATABASE {PG_APP_DATABASE} OWNER {PG_APP_USER}")


def up(s: Settings) -> None:
    """Initialise (once), start (unless running), wait for readiness, create the app role and database."""
    pg = layout(s)
    if len(str(pg.socket(s.pg_port))) > MAX_SOCKET_PATH:
        raise InfraError(f"unix socket path under {pg.run} is too long for PostgreSQL; use a shorter INFRA_DIR")
    _prepare_dirs(pg, s)
    _initdb(pg)
    running_port = _running_port(pg)
    if running_port is not None and running_port != s.pg_port:
        raise InfraError(
            f"PostgreSQL from {pg.data} is running on port {running_port}, not PG_PORT={s.pg_port}; run `down` first"
        )
    if running_port is None:
        _write_owned(pg.data / "infra.conf", settings_file(pg, s.pg_port))
        if tcp_open(s.pg_port):
            raise InfraError(f"port 127.0.0.1:{s.pg_port} is already in use by another process; stop it or set PG_PORT")
        log(f"starting PostgreSQL on 127.0.0.1:{s.pg_port}")
        result = _pg_run(
            [pg_bin() / "pg_ctl", "-D", pg.data, "-l", pg.log, "-w", "-t", str(PG_START_TIMEOUT_S), "start"],
            timeout=PG_START_TIMEOUT_S + 30,
        )
        if result.returncode != 0:
            raise InfraError(
                f"pg_ctl start failed (exit {result.returncode}): {result.stdout.strip()} "
                f"{result.stderr.strip()}\nLast {LOG_TAIL_LINES} lines of {pg.log}:\n{tail(pg.log)}"
            )
    deadline = time.monotonic() + PG_READY_TIMEOUT_S
    while not _isready(s):
        if time.monotonic() > deadline:
            raise InfraError(
                f"PostgreSQL not ready after {PG_READY_TIMEOUT_S:.0f}s. Last lines of {pg.log}:\n" + tail(pg.log)
            )
        time.sleep(POLL_INTERVAL_S)
    _ensure_app_db(pg, s)
    log(f"PostgreSQL ready on 127.0.0.1:{s.pg_port}")


def down(s: Settings) -> None:
    """``pg_ctl stop -m fast`` when running."""
    pg = layout(s)
    if _running_port(pg) is None:
        return
    log("stopping PostgreSQL")
    result = _pg_run([pg_bin() / "pg_ctl", "-D", pg.data, "stop", "-m", "fast", "-w", "-t", "60"], timeout=90)
    if result.returncode != 0:
        raise InfraError(f"pg_ctl stop failed: {result.stdout.strip()} {result.stderr.strip()}")


def status_line(s: Settings, expected: bool) -> tuple[bool, str]:
    """Whether the server is up and serves, and its status line."""
    pg = layout(s)
    port = _running_port(pg)
    is_up = port is not None and _isready(s)
    pid = read_pid(pg.data / "postmaster.pid") if is_up else None
    suffix = "" if expected else " (not expected)"
    line = (
        f"postgres: {'up' if is_up else 'down'}{suffix} pid={pid or '-'} "
        f"address=127.0.0.1:{s.pg_port} data={pg.data}"
    )
    return is_up, line


def delete_data(s: Settings) -> None:
    """Delete the cluster, stopped first (``reset``): its directories inside ``INFRA_DIR`` and outside."""
    pg = layout(s)
    inside = PostgresLayout(s.infra_dir, s.infra_dir)
    for path in (inside.data, inside.run):
        if path.exists():
            log(f"deleting {path}")
            shutil.rmtree(path)
    if pg.outside and pg.root.exists():
        log(f"deleting {pg.root}")
        shutil.rmtree(pg.root)
