"""The writer: its admission bounds and deadlines (pure logic, no database), and what it makes of
PostgreSQL's refusals and outages (the real PostgreSQL)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from app.db import outbox as store
from app.db.database import DatabaseUnavailable, apply_migrations
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog
from app.outbox.writer import OutboxError, OutboxUnavailable, OutboxWriter


def entry(payload_bytes: int = 1, event_id: uuid.UUID | None = None) -> store.OutboxEntry:
    body = b"x" * payload_bytes
    return store.OutboxEntry(event_id or uuid.uuid4(), "t", b"k", body, [("event-id", b"x")], None, body)


def migrated() -> trio.Event:
    ready = trio.Event()
    ready.set()
    return ready


def writer_for(
    url: str = "postgresql://unused",
    *,
    backlog: Backlog | None = None,
    metrics: Metrics | None = None,
    schema_ready: trio.Event | None = None,
    max_queue_bytes: int = 1 << 20,
    write_timeout: float = 0.05,
) -> OutboxWriter:
    return OutboxWriter(
        url, backlog or Backlog(1000), metrics or Metrics(),
        schema_ready=migrated() if schema_ready is None else schema_ready,
        max_group_events=10, max_queue=10, max_queue_bytes=max_queue_bytes, write_timeout=write_timeout,
    )


async def test_the_write_queue_is_bounded_in_bytes_as_well_as_requests() -> None:
    # No writer task runs: what is queued stays queued, and each write gives up at its timeout.
    writer = writer_for(max_queue_bytes=100)
    with pytest.raises(OutboxUnavailable, match="100 bytes"):
        await writer.write([entry(200)])
    with pytest.raises(OutboxUnavailable, match="did not commit"):
        await writer.write([entry(49)])  # 50 bytes with its key: queued
    assert writer.queued_bytes == 50
    with pytest.raises(OutboxUnavailable, match="100 bytes"):
        await writer.write([entry(30), entry(29)])  # 60 more would pass the bound
    assert writer.queued_bytes == 50


async def test_a_request_past_the_backlog_limit_is_refused_before_it_is_queued() -> None:
    backlog = Backlog(10)
    backlog.committed(8)
    writer = writer_for(backlog=backlog)
    with pytest.raises(OutboxUnavailable, match="backlog is over its limit of 10"):
        await writer.write([entry(), entry(), entry()])
    assert writer.queued_bytes == 0
    with pytest.raises(OutboxUnavailable, match="did not commit"):
        await writer.write([entry(), entry()])  # 10: at the limit, still taken


async def test_before_the_schema_is_migrated_writes_and_lookups_are_unavailable() -> None:
    writer = writer_for(schema_ready=trio.Event())
    with pytest.raises(OutboxUnavailable, match="not migrated"):
        await writer.write([entry()])
    assert writer.queued_bytes == 0
    with pytest.raises(DatabaseUnavailable, match="not migrated"):
        await writer.status(uuid.uuid4())


async def test_a_stuck_status_lookup_is_cut_short_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    class Connection:
        closed = False

    stuck = trio.Event()

    def look_up(conn: Any, event_id: uuid.UUID) -> None:
        stuck.set()
        time.sleep(3)  # a lookup no timeout of psycopg's ends

    monkeypatch.setattr(store, "connect", lambda url, timeout: Connection())
    monkeypatch.setattr(store, "event_status", look_up)
    writer = writer_for(write_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="no answer within 0.2s"):
        await writer.status(uuid.uuid4())
    assert time.monotonic() - started < 1.5 and stuck.is_set()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="no answer"):  # the reader is still busy: not used meanwhile
        await writer.status(uuid.uuid4())
    assert time.monotonic() - started < 1.5


@pytest.mark.integration
async def test_a_request_postgresql_refuses_fails_alone_and_is_counted(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    apply_migrations(database_url, timeout=5)
    metrics = Metrics()
    backlog = Backlog(1000)
    writer = writer_for(database_url, backlog=backlog, metrics=metrics, write_timeout=5)
    twice = uuid.uuid4()
    results: dict[str, object] = {}

    async def write(name: str, entries: list[store.OutboxEntry]) -> None:
        try:
            results[name] = await writer.write(entries)
        except Exception as error:
            results[name] = error

    async with trio.open_nursery() as nursery:
        # Both are queued before the writer task runs: they share one group commit.
        nursery.start_soon(write, "good", [entry()])
        nursery.start_soon(write, "bad", [entry(event_id=twice), entry(event_id=twice)])  # a unique violation
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(writer.run)
        with trio.fail_after(20):
            while len(results) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

    bad, good = results["bad"], results["good"]
    assert isinstance(bad, OutboxError) and not isinstance(bad, OutboxUnavailable)
    assert "duplicate key" in str(bad)
    assert isinstance(good, list) and len(good) == 1, "the request sharing the group is committed all the same"
    assert metrics.registry.get_sample_value("outbox_errors_total", {"kind": "write"}) == 1
    assert backlog.estimate == 1, "only what was committed counts against the backlog"
    assert [r.levelname for r in caplog.records if "refused by PostgreSQL" in r.getMessage()] == ["ERROR"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)


@pytest.mark.integration
async def test_a_lookup_postgresql_refuses_is_an_outbox_error(database_url: str) -> None:
    apply_migrations(database_url, timeout=5)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE outbox DROP COLUMN kafka_offset")  # a schema changed by hand
    metrics = Metrics()
    writer = writer_for(database_url, metrics=metrics, write_timeout=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)  # which closes the reader when it ends
        with pytest.raises(OutboxError, match="kafka_offset"):
            await writer.status(uuid.uuid4())
        nursery.cancel_scope.cancel()
    assert metrics.registry.get_sample_value("outbox_errors_total", {"kind": "status"}) == 1


async def test_a_database_out_of_reach_is_still_unavailable() -> None:
    metrics = Metrics()
    writer = writer_for("postgresql://gateway:gateway@127.0.0.1:1/gateway", metrics=metrics, write_timeout=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with pytest.raises(OutboxUnavailable, match="database unavailable"):
            await writer.write([entry()])
        with pytest.raises(DatabaseUnavailable):
            await writer.status(uuid.uuid4())
        nursery.cancel_scope.cancel()
    assert metrics.registry.get_sample_value("outbox_errors_total", {"kind": "write"}) == 0
