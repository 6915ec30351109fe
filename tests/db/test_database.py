"""Migrations against the real PostgreSQL."""

from __future__ import annotations


import psycopg
import pytest
import trio

from app.db.database import DatabaseUnavailable, apply_migrations, migrations, ping

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
