"""The relay's recovery at both crash windows, made deterministic; real PostgreSQL and Kafka.

A crash is simulated by abandoning a transactional producer exactly where a killed process
would leave it; a new relay must then publish every row exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from app.config import Settings, load_settings
from app.db import outbox as store
from app.db.database import apply_migrations
from app.kafka.admin import ensure_topics
from app.kafka.connection import connection_config
from app.kafka.transactional import OutgoingRecord, TransactionalPublisher
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog
from app.outbox.relay import Relay, RelayState
from app.outbox.writer import OutboxWriter
from app.runtime import Runtime, profile_producer_config, run, topic_specs
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


@pytest.fixture
def prepared(settings: Settings) -> Iterator[psycopg.Connection[object]]:
    apply_migrations(settings.database_url, timeout=5)
    ensure_topics(connection_config(settings), topic_specs(settings), replication_factor=-1, timeout=10)
    conn = store.connect(settings.database_url, timeout=5)
    yield conn
    conn.close()


def insert(conn: psycopg.Connection[object], settings: Settings, count: int) -> list[str]:
    ids = [uuid.uuid4() for _ in range(count)]
    entries = [
        store.OutboxEntry(
            event_id, settings.transaction.topic, b"user", f'{{"n":{i}}}'.encode(),
            [("event-id", str(event_id).encode())], None, b"",
        )
        for i, event_id in enumerate(ids)
    ]
    [result] = store.commit_group(conn, [entries])
    assert isinstance(result, list)
    return [str(event_id) for event_id in ids]


def publisher(settings: Settings) -> TransactionalPublisher:
    return TransactionalPublisher(
        profile_producer_config(settings, "transaction"),
        transactional_id=settings.relay_transactional_id,
        checkpoint_topic=settings.checkpoint_topic,
    )


def records_of(rows: list[store.PendingRow]) -> list[OutgoingRecord]:
    return [OutgoingRecord(r.id, r.topic, r.key, r.payload, r.headers) for r in rows]


def writer_and_relay(settings: Settings, metrics: Metrics) -> tuple[Backlog, OutboxWriter, Relay]:
    backlog = Backlog(1000)
    migrated = trio.Event()
    migrated.set()
    writer = OutboxWriter(
        settings.database_url, backlog, metrics, schema_ready=migrated, max_group_events=100, max_queue=10,
        max_queue_bytes=1 << 20, write_timeout=5,
    )
    relay = Relay(
        settings.database_url, profile_producer_config(settings, "transaction"), backlog, metrics,
        schema_ready=migrated, transactional_id=settings.relay_transactional_id,
        checkpoint_topic=settings.checkpoint_topic,
        batch_size=100, poll_interval=0.1, kafka_timeout=10, retention=dt.timedelta(days=1),
    )
    return backlog, writer, relay


async def run_relay_until_published(settings: Settings, conn: psycopg.Connection[object]) -> Metrics:
    metrics = Metrics()
    _, _, relay = writer_and_relay(settings, metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        with trio.fail_after(60):
            while store.backlog(conn).pending:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return metrics


async def read_ids(kafka: KafkaReader, settings: Settings, expected: set[str]) -> Counter[str]:
    records = await kafka.read(
        settings.transaction.topic,
        until=lambda rs: expected <= {r.headers["event-id"].decode() for r in rs},
        timeout=30,
        settle=1.5,
    )
    return Counter(r.headers["event-id"].decode() for r in records)


async def test_crash_after_kafka_commit_before_marking_is_recovered_from_the_checkpoint(
    settings: Settings, prepared: psycopg.Connection[object], kafka: KafkaReader
) -> None:
    ids = insert(prepared, settings, 30)
    crashed = publisher(settings)
    assert crashed.open(10) is None
    first = store.pending(prepared, 20)
    positions = crashed.publish(records_of(first), 10)  # committed in Kafka ...
    assert len(positions) == 20
    del crashed  # ... and the process dies before marking the rows in PostgreSQL.
    assert store.backlog(prepared).pending == 30

    metrics = await run_relay_until_published(settings, prepared)
    counts = await read_ids(kafka, settings, set(ids))
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    # Only the ten rows the crashed relay never sent were published again.
    assert metrics.registry.get_sample_value("outbox_published_total") == 10
    status = store.event_status(prepared, uuid.UUID(ids[0]))
    assert status is not None and (status.partition, status.offset) == positions[0][1:]


async def test_crash_inside_an_open_transaction_is_aborted_and_published_again(
    settings: Settings, prepared: psycopg.Connection[object], kafka: KafkaReader
) -> None:
    import confluent_kafka

    ids = insert(prepared, settings, 10)
    config = {**profile_producer_config(settings, "transaction"), "transactional.id": settings.relay_transactional_id}
    zombie = confluent_kafka.Producer(config)
    zombie.init_transactions(10)
    zombie.begin_transaction()
    for row in store.pending(prepared, 10):
        headers: list[tuple[str, str | bytes | None]] = list(row.headers)
        zombie.produce(row.topic, row.payload, row.key, headers=headers)
    assert zombie.flush(10) == 0  # written to the log, never committed: the process dies here.

    await run_relay_until_published(settings, prepared)
    counts = await read_ids(kafka, settings, set(ids))
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    # The zombie was fenced by the new relay: it can no longer commit its transaction.
    with pytest.raises(confluent_kafka.KafkaException):
        zombie.commit_transaction(10)


async def test_rows_committed_while_the_backlog_is_counted_count_against_its_bound(
    settings: Settings, prepared: psycopg.Connection[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count of pending rows that starts before a commit and ends after it does not lower the estimate."""
    insert(prepared, settings, 2)
    assert store.try_lead(prepared), "this test holds the lead: the relay only counts, it publishes nothing"
    metrics = Metrics()
    backlog, writer, relay = writer_and_relay(settings, metrics)
    count = store.backlog
    counts: list[store.Backlog] = []

    def count_then_a_commit(conn: psycopg.Connection[object]) -> store.Backlog:
        backlog = count(conn)
        if not counts:  # the first count: one more row commits before its answer is used
            entry = store.OutboxEntry(uuid.uuid4(), settings.transaction.topic, b"user", b"{}", [], None, b"")
            trio.from_thread.run(writer.write, [entry])
        counts.append(backlog)
        return backlog

    monkeypatch.setattr(store, "backlog", count_then_a_commit)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await nursery.start(relay.run)
        with trio.fail_after(30):
            while backlog.estimate < 2:  # 1 after the commit, then the relay's estimate
                await trio.sleep(0.01)
        estimate = backlog.estimate
        nursery.cancel_scope.cancel()
    assert counts[0].pending == 2, "the first count missed the row committed during it"
    assert estimate == 3, "the committed row is in the estimate all the same"


def unstarted_relay(settings: Settings, metrics: Metrics, schema_ready: trio.Event) -> Relay:
    return Relay(
        settings.database_url, profile_producer_config(settings, "transaction"), Backlog(1000), metrics,
        schema_ready=schema_ready, transactional_id=settings.relay_transactional_id,
        checkpoint_topic=settings.checkpoint_topic, batch_size=100, poll_interval=0.1, kafka_timeout=5,
        retention=dt.timedelta(days=1),
    )


async def test_a_statement_postgresql_refuses_is_logged_once_not_at_every_retry(
    settings: Settings, prepared: psycopg.Connection[object], caplog: pytest.LogCaptureFixture
) -> None:
    prepared.execute("DROP TABLE outbox")  # a schema changed by hand under a running relay
    metrics = Metrics()
    ready = trio.Event()
    ready.set()
    relay = unstarted_relay(settings, metrics, ready)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        with trio.fail_after(30):  # attempts 0.5, 1 and 2 s apart
            while (metrics.registry.get_sample_value("outbox_publish_failures_total") or 0) < 3:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert (metrics.registry.get_sample_value("outbox_errors_total", {"kind": "relay"}) or 0) >= 3
    said = [r for r in caplog.records if r.name == "app.outbox.relay" and r.levelno >= logging.WARNING]
    assert [(r.levelname, 'relation "outbox" does not exist' in r.getMessage()) for r in said] == [("ERROR", True)]


async def test_the_relay_touches_nothing_before_the_schema_is_ready(gateway_env: dict[str, str]) -> None:
    # PostgreSQL out of reach: any attempt would fail at once and be counted.
    settings = load_settings({**gateway_env, "DATABASE_URL": "postgresql://gateway:gateway@127.0.0.1:1/gateway"})
    metrics = Metrics()
    ready = trio.Event()
    relay = unstarted_relay(settings, metrics, ready)
    failures = partial(metrics.registry.get_sample_value, "outbox_publish_failures_total")
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        await trio.sleep(1.0)
        assert failures() == 0 and relay.state is RelayState.STANDBY
        ready.set()
        with trio.fail_after(10):
            while not failures():
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_a_gateway_on_a_fresh_schema_starts_without_a_relay_failure(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The first start migrates the schema while the relay starts: the relay waits for it."""
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        await wait_ready(runtime.url("transaction"))
        async with httpx.AsyncClient(base_url=runtime.url("transaction")) as client:
            response = await client.post(
                "/api/v1/transactions", json={"userId": "u", "type": "DEPOSIT", "amount": "1.00", "currency": "USD"}
            )
        assert response.status_code == 202
        metrics = runtime.metrics.registry
        with trio.fail_after(60):
            while not metrics.get_sample_value("outbox_published_total"):
                await trio.sleep(0.05)
        assert metrics.get_sample_value("outbox_publish_failures_total") == 0
        runtime.shutdown()
    assert any("applied database migrations" in r.getMessage() for r in caplog.records), "the schema was fresh"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "does not exist" in r.getMessage()]


async def test_a_kafka_configuration_librdkafka_refuses_is_logged_once_without_a_traceback(
    settings: Settings, prepared: psycopg.Connection[object], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    ssl = {"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "no-such-ca.pem")}
    metrics = Metrics()
    ready = trio.Event()
    ready.set()
    relay = Relay(
        settings.database_url, {**profile_producer_config(settings, "transaction"), **ssl}, Backlog(1000), metrics,
        schema_ready=ready, transactional_id=settings.relay_transactional_id,
        checkpoint_topic=settings.checkpoint_topic, batch_size=100, poll_interval=0.1, kafka_timeout=5,
        retention=dt.timedelta(days=1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        with trio.fail_after(30):  # attempts 0.5, 1 and 2 s apart
            while (metrics.registry.get_sample_value("outbox_publish_failures_total") or 0) < 3:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    said = [r for r in caplog.records if r.name == "app.outbox.relay" and r.levelno >= logging.WARNING]
    assert [(r.levelname, "ssl.ca.location" in r.getMessage(), r.exc_info) for r in said] == [("ERROR", True, None)]
