"""The relay's recovery at both crash windows, made deterministic; real PostgreSQL and Kafka.

A crash is simulated by abandoning a transactional producer exactly where a killed process
would leave it; a new relay must then publish every row exactly once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
import trio

from app.config import Settings
from app.db import outbox as store
from app.db.database import apply_migrations
from app.kafka.admin import ensure_topics
from app.kafka.connection import connection_config
from app.kafka.transactional import OutgoingRecord, TransactionalPublisher
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog
from app.outbox.relay import Relay
from app.outbox.writer import OutboxWriter
from app.runtime import profile_producer_config, topic_specs
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
    writer = OutboxWriter(
        settings.database_url, backlog, metrics, max_group_events=100, max_queue=10, max_queue_bytes=1 << 20,
        write_timeout=5,
    )
    relay = Relay(
        settings.database_url, profile_producer_config(settings, "transaction"), backlog, metrics,
        transactional_id=settings.relay_transactional_id, checkpoint_topic=settings.checkpoint_topic,
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
        zombie.produce(row.topic, row.payload, row.key, headers=row.headers)
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
