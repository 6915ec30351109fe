"""The outbox SQL against the real PostgreSQL: group commit results, marking, retention."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from app.db import outbox as store
from app.db.database import DatabaseError, DatabaseUnavailable, apply_migrations

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    apply_migrations(database_url, timeout=5)
    connection = store.connect(database_url, timeout=5)
    yield connection
    connection.close()


def entry(key: str | None = None, body: bytes = b"a") -> store.OutboxEntry:
    return store.OutboxEntry(uuid.uuid4(), "t", b"k", body, [("event-id", b"x")], key, body)


def test_one_group_resolves_each_request_on_its_own(conn: psycopg.Connection[Any]) -> None:
    first = entry("k1")
    [accepted] = store.commit_group(conn, [[first]])
    assert accepted == [store.Accepted(first.event_id, replayed=False)]

    replay, conflict, batch_with_conflict, fresh, same_key_twice = (
        [entry("k1")],
        [entry("k1", b"other")],
        [entry("k2"), entry("k1", b"other")],
        [entry()],
        [entry("k3")],
    )
    results = store.commit_group(conn, [replay, conflict, batch_with_conflict, fresh, same_key_twice, [entry("k3")]])
    assert results[0] == [store.Accepted(first.event_id, replayed=True)]
    assert isinstance(results[1], store.IdempotencyConflict)
    assert isinstance(results[2], store.IdempotencyConflict)
    assert results[3] == [store.Accepted(fresh[0].event_id, replayed=False)]
    assert results[4] == [store.Accepted(same_key_twice[0].event_id, replayed=False)]
    assert results[5] == [store.Accepted(same_key_twice[0].event_id, replayed=True)]
    # The refused batch left nothing behind: k2 is free.
    [accepted] = store.commit_group(conn, [[entry("k2")]])
    assert isinstance(accepted, list) and accepted[0].replayed is False
    assert store.backlog(conn).pending == 4


def test_marking_is_idempotent_and_retention_purges_only_published_rows(conn: psycopg.Connection[Any]) -> None:
    store.commit_group(conn, [[entry() for _ in range(5)]])
    rows = store.pending(conn, 10)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert store.mark_published(conn, [(r.id, 0, i) for i, r in enumerate(rows[:3])]) == 3
    assert store.mark_published(conn, [(r.id, 0, i) for i, r in enumerate(rows[:3])]) == 0
    assert store.purge_published(conn, dt.timedelta(hours=1)) == 0
    assert store.purge_published(conn, dt.timedelta(0)) == 3
    assert store.backlog(conn).pending == 2
    assert store.replay_since(conn, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)) == 0


def test_a_constraint_violation_is_a_database_error_and_the_connection_stays_usable(
    conn: psycopg.Connection[Any],
) -> None:
    twice = entry()
    with pytest.raises(DatabaseError, match="duplicate key") as raised:
        store.commit_group(conn, [[twice, twice]])
    assert not isinstance(raised.value, DatabaseUnavailable) and raised.value.sqlstate == "23505"
    assert store.backlog(conn).pending == 0, "nothing of the refused transaction is left"
    [accepted] = store.commit_group(conn, [[entry()]])
    assert isinstance(accepted, list) and accepted[0].replayed is False


def test_a_schema_made_wrong_is_a_database_error(conn: psycopg.Connection[Any], database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("ALTER TABLE outbox DROP COLUMN headers")
    with pytest.raises(DatabaseError, match="headers") as raised:
        store.pending(conn, 10)
    assert raised.value.sqlstate == "42703"  # undefined_column
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("DROP TABLE outbox")
    with pytest.raises(DatabaseError, match='relation "outbox" does not exist'):
        store.backlog(conn)


def test_a_connection_the_server_ended_is_unavailable(conn: psycopg.Connection[Any], database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(DatabaseUnavailable):
        store.backlog(conn)
