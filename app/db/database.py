"""The PostgreSQL adapter: schema migrations and reachability. Only this package sees psycopg.

Migrations are the numbered ``sql/NNNN_*.sql`` files shipped with the package. Each is
applied once, in order, inside a transaction that holds an advisory lock, so several
instances starting together against one database apply each exactly once.
"""

from __future__ import annotations

import logging
import math
from importlib import resources

import psycopg
import trio

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6B6C6777  # pg_advisory_xact_lock key shared by every instance
READY_CACHE_SECONDS = 1.0


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or refused a statement."""


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration shipped with the package, in order."""
    folder = resources.files("app.db") / "sql"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def apply_migrations(url: str, *, timeout: float) -> list[str]:
    """Apply the migrations not yet applied; returns their versions. Blocking."""
    applied: list[str] = []
    try:
        with psycopg.connect(url, connect_timeout=max(1, math.ceil(timeout)), autocommit=False) as conn:
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
        raise DatabaseUnavailable(str(error).strip()) from None
    return applied


def ping(url: str, *, timeout: float) -> None:
    """Raise DatabaseUnavailable unless PostgreSQL answers a query. Blocking."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, math.ceil(timeout))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise DatabaseUnavailable(str(error).strip()) from None


class Database:
    """Keeps the schema migrated and answers readiness for the transaction listener."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(2)
        self.migrated = False
        self._probe_at = -math.inf
        self._probe_result: str | None = "not probed yet"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply migrations, retrying with backoff until PostgreSQL accepts them."""
        task_status.started()
        delay = 0.5
        while True:
            try:
                with trio.fail_after(self._timeout * 4):
                    applied = await trio.to_thread.run_sync(
                        lambda: apply_migrations(self._url, timeout=self._timeout), limiter=self._limiter
                    )
            except (DatabaseUnavailable, trio.TooSlowError) as error:
                log.warning("database migrations not applied yet (retrying in %.1fs): %s", delay, error)
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if applied:
                log.info("applied database migrations %s", ", ".join(applied))
            self.migrated = True
            return

    async def probe(self) -> str | None:
        if not self.migrated:
            return "database schema not migrated yet"
        if trio.current_time() - self._probe_at < READY_CACHE_SECONDS:
            return self._probe_result
        try:
            with trio.fail_after(self._timeout + 1.0):
                await trio.to_thread.run_sync(
                    lambda: ping(self._url, timeout=self._timeout), limiter=self._limiter, abandon_on_cancel=True
                )
        except DatabaseUnavailable as error:
            result: str | None = f"database unreachable: {error}"
        except trio.TooSlowError:
            result = f"database did not answer within {self._timeout:.1f}s"
        else:
            result = None
        self._probe_at = trio.current_time()
        self._probe_result = result
        return result
