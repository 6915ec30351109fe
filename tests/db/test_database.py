"""Migrations and the bounds on every wait, against the real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import trio

from app.db import outbox as store
from app.db import database as database_module
from app.db.database import (
    MIGRATION_LOCK, Database, DatabaseError, DatabaseUnavailable, apply_migrations, connect, migrations, ping,
)
from tests.conftest import Infra

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_database(database_url: str) -> str:
    return database_url


def test_migrations_apply_once_in_order(fresh_database: str) -> None:
    versions = [version for version, _ in migrations()]
    assert versions == sorted(versions) and versions[0].startswith("0001")
    assert apply_migrations(fresh_database, timeout=5) == versions
    assert apply_migrations(fresh_database, timeout=5) == []
    with psycopg.connect(fresh_database) as conn:
        columns = {row[0] for row in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox' AND table_schema = current_schema()")}
    assert {"event_id", "idempotency_key", "payload", "published_at", "kafka_offset"} <= columns


async def test_instances_starting_together_apply_each_migration_once(fresh_database: str) -> None:
    results: list[list[str]] = []

    async def migrate() -> None:
        results.append(await trio.to_thread.run_sync(lambda: apply_migrations(fresh_database, timeout=5)))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(migrate)
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations())]


def test_unreachable_database_is_translated() -> None:
    with pytest.raises(DatabaseUnavailable):
        ping("postgresql://gateway:gateway@127.0.0.1:1/gateway", timeout=1)


async def within(seconds: float, blocking: Callable[[], Any]) -> float:
    """Run ``blocking`` in a thread; how long it took. A thread still waiting at ``seconds`` fails the test."""
    started = time.monotonic()
    with trio.fail_after(seconds):
        await trio.to_thread.run_sync(blocking, abandon_on_cancel=True)
    return time.monotonic() - started


async def test_a_migration_lock_held_elsewhere_is_waited_for_only_within_the_timeout(fresh_database: str) -> None:
    with psycopg.connect(fresh_database) as other:  # another instance, in the middle of its migration
        other.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))

        def migrate() -> None:
            with pytest.raises(DatabaseUnavailable, match="lock timeout"):
                apply_migrations(fresh_database, timeout=1)

        assert await within(20, migrate) < 5
    assert apply_migrations(fresh_database, timeout=5) == [version for version, _ in migrations()], "then it goes on"


async def test_an_outbox_statement_waits_on_a_lock_only_within_the_timeout(fresh_database: str) -> None:
    apply_migrations(fresh_database, timeout=5)
    conn = store.connect(fresh_database, timeout=1)
    with conn:
        settings = conn.execute("SELECT current_setting('search_path'), current_setting('statement_timeout')").fetchone()
        assert settings is not None
        search_path, statement_timeout = settings
        assert search_path.startswith("test_") and statement_timeout == "1s", "the URL's options are kept"
        entry = store.OutboxEntry(uuid.uuid4(), "t", b"k", b"{}", [], "held-key", b"{}")
        with psycopg.connect(fresh_database) as other:
            other.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")  # held until this block ends

            def commit() -> None:  # the lock or the statement timeout, whichever the server sees first
                with pytest.raises(DatabaseUnavailable, match="(lock|statement) timeout"):
                    store.commit_group(conn, [[entry]])

            assert await within(20, commit) < 5


def test_a_malformed_url_is_translated() -> None:
    with pytest.raises(DatabaseUnavailable, match="schema"):
        connect("postgresql://gateway@127.0.0.1/gateway?schema=x", timeout=1, statement_timeout=1)


def test_pgoptions_is_kept_when_the_url_gives_no_options(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "options=" not in infra.database_url
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=7MB")
    with connect(infra.database_url, timeout=2, statement_timeout=3) as conn:
        row = conn.execute("SELECT current_setting('work_mem'), current_setting('statement_timeout')").fetchone()
    assert row == ("7MB", "3s")


def test_a_migration_postgresql_refuses_is_a_database_error(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE outbox (id INTEGER)")  # made by hand, in the migration's way
    with pytest.raises(DatabaseError, match="already exists") as raised:
        apply_migrations(fresh_database, timeout=5)
    assert not isinstance(raised.value, DatabaseUnavailable) and raised.value.sqlstate == "42P07"


async def test_the_database_task_reports_a_refused_migration_once_and_stays_not_ready(
    fresh_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE outbox (id INTEGER)")
    database = Database(fresh_database, timeout=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(database.run)
        with trio.fail_after(20):
            while not caplog.records:
                await trio.sleep(0.05)
        assert "already exists" in (await database.probe() or "")
        nursery.cancel_scope.cancel()
    assert not database.schema_ready.is_set() and not database.migrated
    assert [(r.levelname, "already exists" in r.getMessage()) for r in caplog.records] == [("ERROR", True)]


async def test_the_database_task_sets_schema_ready_once_migrated(fresh_database: str) -> None:
    database = Database(fresh_database, timeout=2)
    assert await database.probe() == "database schema not migrated yet"
    await database.run()  # returns once the migrations are applied
    assert database.schema_ready.is_set() and database.migrated
    assert await database.probe() is None


async def test_a_migration_stuck_in_its_thread_does_not_hold_up_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake: a migration that no timeout of psycopg's ends (a statement of a large table's migration, say).
    monkeypatch.setattr(database_module, "apply_migrations", lambda url, timeout: time.sleep(3))
    database = Database("postgresql://unused", timeout=1)
    started = time.monotonic()
    with trio.move_on_after(0.2):
        await database.run()
    assert time.monotonic() - started < 1.5
