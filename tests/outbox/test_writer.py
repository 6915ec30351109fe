"""The writer's admission bounds (pure logic: nothing reaches a database here)."""

import uuid

import pytest

from app.db import outbox as store
from app.observability.metrics import Metrics
from app.outbox.backlog import Backlog
from app.outbox.writer import OutboxUnavailable, OutboxWriter


def entry(payload_bytes: int) -> store.OutboxEntry:
    body = b"x" * payload_bytes
    return store.OutboxEntry(uuid.uuid4(), "t", b"k", body, [("event-id", b"x")], None, body)


async def test_the_write_queue_is_bounded_in_bytes_as_well_as_requests() -> None:
    # No writer task runs: what is queued stays queued, and each write gives up at its timeout.
    writer = OutboxWriter(
        "postgresql://unused", Backlog(1000), Metrics(), max_group_events=10, max_queue=10, max_queue_bytes=100,
        write_timeout=0.05,
    )
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
    writer = OutboxWriter(
        "postgresql://unused", backlog, Metrics(), max_group_events=10, max_queue=10, max_queue_bytes=1000,
        write_timeout=0.05,
    )
    with pytest.raises(OutboxUnavailable, match="backlog is over its limit of 10"):
        await writer.write([entry(1), entry(1), entry(1)])
    assert writer.queued_bytes == 0
    with pytest.raises(OutboxUnavailable, match="did not commit"):
        await writer.write([entry(1), entry(1)])  # 10: at the limit, still taken
