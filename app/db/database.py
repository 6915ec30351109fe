"""The PostgreSQL adapter: schema migrations and reachability. Only this package sees psycopg.

Migrations are the numbered ``sql/NNNN_*.sql`` files shipped with the package. Each is
applied once, in order, inside a transaction that holds an advisory lock, so several
instances starting together against one database apply each exactly once.
"""

from __future__ import annotations

import logging
import math
import os
from importlib import resources
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6B6C6777  # pg_advisory_xact_lock key shared by every instance
READY_CACHE_SECONDS = 1.0


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached, the connection broke, or a wait ran past its bound: retry later."""


class DatabaseError(Exception):
    """PostgreSQL refused a statement for what it is (SQL, schema, a constraint): a bug, not an outage.

    ``sqlstate`` is the server's error code, when the server sent one.
    """

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def translate(error: psycopg.Error) -> DatabaseUnavailable | DatabaseError:
    """The project's exception for a psycopg error: only connection-level errors mean unavailable.

    ``OperationalError`` covers a failed or broken connection, the server shutting down, too many
    connections, and the bounded waits (``lock_timeout``, ``statement_timeout``, a serialization
    failure or deadlock); ``InterfaceError`` a connection closed on this side. Everything else
    (``ProgrammingError``, ``IntegrityError``, ``DataError``...) is a bug that retrying will not fix.
    """
    message = str(error).strip()
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return DatabaseUnavailable(message)
    return DatabaseError(message, error.sqlstate)


def connect(url: str, *, timeout: float, statement_timeout: float, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection whose every wait is bounded. Blocking; raises DatabaseUnavailable.

    ``timeout`` bounds connecting and every lock wait (``lock_timeout``); ``statement_timeout``
    (0 for none) bounds each statement on the server. Both are added to the options the URL (or
    else ``PGOPTIONS``) gives, and win over the same settings there.

    A server gone silent (a dropped route, a host that died without closing) breaks the
    connection instead of holding a query for hours: TCP keepalives probe an idle connection
    after 10 s, and the user timeout (at least 10 s) drops one whose probes or data go
    unanswered. Keepalive settings the URL gives are kept.
    """
    try:
        given = conninfo_to_dict(url)
        options = [str(given.get("options") or os.environ.get("PGOPTIONS", "")), f"-c lock_timeout={_ms(timeout)}"]
        if statement_timeout > 0:
            options.append(f"-c statement_timeout={_ms(statement_timeout)}")
        defaults: dict[str, Any] = {
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": _ms(max(10.0, 2 * timeout)),
        }
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=max(1, math.ceil(timeout)),
            options=" ".join(o for o in options if o),
            **{name: value for name, value in defaults.items() if name not in given},
        )
    except psycopg.Error as error:
        # Connecting only fails at the connection level; a URL it cannot use, too, is the
        # database out of reach as configured (answered 503, reported by /ready).
        raise DatabaseUnavailable(str(error).strip()) from None


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration shipped with the package, in order."""
    folder = resources.files("app.db") / "sql"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def apply_migrations(url: str, *, timeout: float) -> list[str]:
    """Apply the migrations not yet applied; returns their versions. Blocking.

    Waiting for another instance's migration lock (or any lock) is bounded by ``timeout``: the
    caller retries. The statements themselves are not: a migration of a large table may take long.
    """
    applied: list[str] = []
    try:
        with connect(url, timeout=timeout, statement_timeout=0, autocommit=False) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                for version, sql in migrations():
                    if version in done:
                        continue
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                    applied.append(version)
    except psycopg.Error as error:
        raise translate(error) from None
    return applied


def ping(url: str, *, timeout: float) -> None:
    """Raise DatabaseUnavailable unless PostgreSQL answers a query. Blocking."""
    try:
        with connect(url, timeout=timeout, statement_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise translate(error) from None


class Database:
    """Keeps the schema migrated and answers readiness for the transaction listener."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(2)
        # Set once the migrations are applied: the outbox's writer and relay touch no table before.
        self.schema_ready = trio.Event()
        self._migration_failure: str | None = None
        self._probe_at = -math.inf
        self._probe_result: str | None = "not probed yet"

    @property
    def migrated(self) -> bool:
        return self.schema_ready.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply migrations, retrying with backoff until PostgreSQL accepts them."""
        task_status.started()
        delay = 0.5
        while True:
            try:
                # No deadline: connect() bounds connecting, lock waits and a silent server, and a migration's
                # statements may take long by design. Abandoned on cancel (shutdown): the connection is its own
                # and is never used again, and PostgreSQL rolls back a migration it does not see committed.
                applied = await trio.to_thread.run_sync(
                    lambda: apply_migrations(self._url, timeout=self._timeout),
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )
            except DatabaseUnavailable as error:
                self._migration_failure = str(error)
                log.warning("database migrations not applied yet (retrying in %.1fs): %s", delay, error)
            except DatabaseError as error:
                # Refused for what it is (a privilege missing, a table changed by hand): it takes a person, so it is
                # said once per distinct error and tried again at the longest delay, in case it was fixed.
                if str(error) != self._migration_failure:
                    log.error("database migrations refused (retrying every %.0fs until they apply): %s", 10.0, error)
                self._migration_failure = str(error)
                delay = 10.0
            else:
                if applied:
                    log.info("applied database migrations %s", ", ".join(applied))
                self._migration_failure = None
                self.schema_ready.set()
                return
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def probe(self) -> str | None:
        if not self.migrated:
            failure = self._migration_failure
            return f"database schema not migrated yet: {failure}" if failure else "database schema not migrated yet"
        if trio.current_time() - self._probe_at < READY_CACHE_SECONDS:
            return self._probe_result
        try:
            # The deadline really bounds the ping: an abandoned thread's answer is discarded, its connection its own.
            with trio.fail_after(self._timeout + 1.0):
                await trio.to_thread.run_sync(
                    lambda: ping(self._url, timeout=self._timeout), limiter=self._limiter, abandon_on_cancel=True
                )
        except DatabaseUnavailable as error:
            result: str | None = f"database unreachable: {error}"
        except DatabaseError as error:
            result = f"database refused the readiness query: {error}"
        except trio.TooSlowError:
            result = f"database did not answer within {self._timeout:.1f}s"
        else:
            result = None
        self._probe_at = trio.current_time()
        self._probe_result = result
        return result
