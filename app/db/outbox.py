"""The outbox table: the SQL of the transaction path. Only this package sees psycopg.

Functions here block; the trio side calls them through ``trio.to_thread`` with a limiter
that gives each connection to one thread at a time. They raise ``DatabaseUnavailable`` when
the connection failed or a bounded wait ran out, and ``DatabaseError`` when PostgreSQL refused
the statement itself (see :func:`app.db.database.translate`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg

from app.db import database

# The relay leader holds this session advisory lock; one per schema, so that several
# deployments (or test runs) can share a database.
RELAY_LOCK_SQL = "hashtext(current_schema() || ':outbox-relay')"


class IdempotencyConflict(Exception):
    """An idempotency key was used before with a different body."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was used with a different body")
        self.key = key


class RetryableConflict(Exception):
    """A request shared an idempotency key with a request refused in the same commit group."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    event_id: uuid.UUID
    topic: str
    key: bytes
    payload: bytes
    headers: list[tuple[str, bytes]]
    idempotency_key: str | None
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: uuid.UUID
    replayed: bool


@dataclass(frozen=True, slots=True)
class PendingRow:
    id: int
    event_id: uuid.UUID
    topic: str
    key: bytes
    payload: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_pending_age: float


@dataclass(frozen=True, slots=True)
class EventStatus:
    event_id: uuid.UUID
    created_at: dt.datetime
    published_at: dt.datetime | None
    topic: str
    partition: int | None
    offset: int | None


RequestResult = list[Accepted] | IdempotencyConflict | RetryableConflict

_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(list[tuple[str, str]]).decode

_INSERT = """
INSERT INTO outbox (event_id, idempotency_key, request_hash, topic, message_key, payload, headers)
SELECT e, k, h, t, mk, p, hd::jsonb
FROM unnest(%s::uuid[], %s::text[], %s::bytea[], %s::text[], %s::bytea[], %s::bytea[], %s::text[])
     AS u(e, k, h, t, mk, p, hd)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING event_id
"""


def connect(url: str, *, timeout: float, statement_timeout: float | None = None) -> psycopg.Connection[Any]:
    """An autocommit connection for the outbox; each statement and lock wait within ``timeout``
    unless ``statement_timeout`` says otherwise (0: statements unbounded, for operators' commands)."""
    statement = timeout if statement_timeout is None else statement_timeout
    return database.connect(url, timeout=timeout, statement_timeout=statement)


def commit_group(conn: psycopg.Connection[Any], requests: Sequence[Sequence[OutboxEntry]]) -> list[RequestResult]:
    """Write several requests' entries in one transaction; one result per request.

    A request is all or nothing: when one of its idempotency keys was used before with a
    different body, its rows are removed again before the commit and it gets the conflict.
    """
    entries = [entry for request in requests for entry in request]
    try:
        with conn.transaction():
            inserted = {
                row[0]
                for row in conn.execute(
                    _INSERT,
                    (
                        [e.event_id for e in entries],
                        [e.idempotency_key for e in entries],
                        [e.request_hash for e in entries],
                        [e.topic for e in entries],
                        [e.key for e in entries],
                        [e.payload for e in entries],
                        [_encode_headers([(k, v.decode()) for k, v in e.headers]).decode() for e in entries],
                    ),
                )
            }
            reused = [e.idempotency_key for e in entries if e.event_id not in inserted and e.idempotency_key]
            existing: dict[str, tuple[uuid.UUID, bytes]] = {}
            if reused:
                for key, event_id, request_hash in conn.execute(
                    "SELECT idempotency_key, event_id, request_hash FROM outbox WHERE idempotency_key = ANY(%s)",
                    (reused,),
                ):
                    existing[key] = (event_id, bytes(request_hash))
            results: list[RequestResult] = []
            removed: set[uuid.UUID] = set()
            for request in requests:
                results.append(_resolve(request, inserted, existing))
                if isinstance(results[-1], IdempotencyConflict):
                    removed.update(e.event_id for e in request if e.event_id in inserted)
            if removed:
                conn.execute("DELETE FROM outbox WHERE event_id = ANY(%s)", (list(removed),))
                for index, result in enumerate(results):
                    if isinstance(result, list) and any(a.event_id in removed for a in result):
                        results[index] = RetryableConflict("retry: a request with the same key was refused")
    except psycopg.Error as error:
        raise database.translate(error) from None
    return results


def _resolve(
    request: Sequence[OutboxEntry], inserted: set[uuid.UUID], existing: dict[str, tuple[uuid.UUID, bytes]]
) -> RequestResult:
    accepted: list[Accepted] = []
    for entry in request:
        if entry.event_id in inserted:
            accepted.append(Accepted(entry.event_id, replayed=False))
            continue
        found = existing.get(entry.idempotency_key or "")
        if found is None:
            return RetryableConflict("retry: the row was neither inserted nor found")
        event_id, request_hash = found
        if request_hash != entry.request_hash:
            return IdempotencyConflict(entry.idempotency_key or "")
        accepted.append(Accepted(event_id, replayed=True))
    return accepted


def event_status(conn: psycopg.Connection[Any], event_id: uuid.UUID) -> EventStatus | None:
    try:
        row = conn.execute(
            "SELECT event_id, created_at, published_at, topic, kafka_partition, kafka_offset"
            " FROM outbox WHERE event_id = %s",
            (event_id,),
        ).fetchone()
    except psycopg.Error as error:
        raise database.translate(error) from None
    return EventStatus(*row) if row else None


def backlog(conn: psycopg.Connection[Any]) -> Backlog:
    try:
        row = conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            " FROM outbox WHERE published_at IS NULL"
        ).fetchone()
    except psycopg.Error as error:
        raise database.translate(error) from None
    assert row is not None
    return Backlog(int(row[0]), float(row[1]))


def try_lead(conn: psycopg.Connection[Any]) -> bool:
    """Take the relay leadership for this connection's session, if no other session has it."""
    try:
        row = conn.execute(f"SELECT pg_try_advisory_lock({RELAY_LOCK_SQL})").fetchone()
    except psycopg.Error as error:
        raise database.translate(error) from None
    return bool(row and row[0])


def pending(conn: psycopg.Connection[Any], limit: int) -> list[PendingRow]:
    try:
        rows = conn.execute(
            "SELECT id, event_id, topic, message_key, payload, headers::text FROM outbox"
            " WHERE published_at IS NULL ORDER BY id LIMIT %s",
            (limit,),
        ).fetchall()
    except psycopg.Error as error:
        raise database.translate(error) from None
    return [
        PendingRow(id_, event_id, topic, bytes(key), bytes(payload), [(k, v.encode()) for k, v in _decode_headers(headers)])
        for id_, event_id, topic, key, payload, headers in rows
    ]


def mark_published(conn: psycopg.Connection[Any], rows: Sequence[tuple[int, int, int]]) -> int:
    """Record (outbox id, partition, offset) of published rows; returns how many were still pending."""
    if not rows:
        return 0
    try:
        cursor = conn.execute(
            "UPDATE outbox AS o SET published_at = now(), kafka_partition = u.p, kafka_offset = u.o"
            " FROM unnest(%s::bigint[], %s::int[], %s::bigint[]) AS u(id, p, o)"
            " WHERE o.id = u.id AND o.published_at IS NULL",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )
    except psycopg.Error as error:
        raise database.translate(error) from None
    return cursor.rowcount


def purge_published(conn: psycopg.Connection[Any], older_than: dt.timedelta, limit: int = 10_000) -> int:
    try:
        cursor = conn.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
            " WHERE published_at IS NOT NULL AND published_at < now() - %s LIMIT %s)",
            (older_than, limit),
        )
    except psycopg.Error as error:
        raise database.translate(error) from None
    return cursor.rowcount


def replay_since(conn: psycopg.Connection[Any], since: dt.datetime) -> int:
    """Make published rows created at or after ``since`` pending again (same event ids)."""
    try:
        cursor = conn.execute(
            "UPDATE outbox SET published_at = NULL, kafka_partition = NULL, kafka_offset = NULL"
            " WHERE created_at >= %s AND published_at IS NOT NULL",
            (since,),
        )
    except psycopg.Error as error:
        raise database.translate(error) from None
    return cursor.rowcount


def summary(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    try:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE published_at IS NULL),"
            " count(*) FILTER (WHERE published_at IS NOT NULL),"
            " min(created_at) FILTER (WHERE published_at IS NULL),"
            " max(published_at),"
            " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            f"  AND objid = ({RELAY_LOCK_SQL})::bit(32)::bigint::oid AND objsubid = 1 LIMIT 1)"
            " FROM outbox"
        ).fetchone()
    except psycopg.Error as error:
        raise database.translate(error) from None
    assert row is not None
    return {
        "pending": row[0],
        "published": row[1],
        "oldestPending": row[2].isoformat() if row[2] else None,
        "lastPublished": row[3].isoformat() if row[3] else None,
        "relayLeaderBackendPid": row[4],
    }
