"""The streams a request's events go to: they turn events into Kafka records and take them.

- :class:`ChannelStream`: application logs and host metrics, into a producer profile's bounded
  buffer (202 means taken into memory; the profile delivers);
- :class:`TransactionStream`: financial events, committed into the PostgreSQL outbox (202 means
  committed; the relay publishes them to Kafka exactly once).

A stream answers with :class:`~app.dialects.base.Accepted` or raises a :class:`~app.core.Refusal`
(413, 409, 503), which the request's dialect puts in its own terms.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec

from app import events
from app.core import Acknowledgement, Headers, Outcome, Record, Refusal, Sink, Span, sized, value_lengths
from app.config import Settings
from app.db.database import DatabaseUnavailable
from app.db.outbox import Accepted as Committed
from app.db.outbox import IdempotencyConflict, OutboxEntry, RetryableConflict
from app.dialects.base import Accepted, Decoded, Request
from app.ids import new_uuids
from app.observability.tracing import TraceContext
from app.outbox.writer import OutboxError, OutboxUnavailable, OutboxWriter

MAX_IDEMPOTENCY_KEY: Final = 255

_encode: Final = msgspec.json.Encoder().encode
_encode_lines: Final = msgspec.json.Encoder().encode_lines
_canonical: Final = msgspec.json.Encoder(order="sorted").encode


def received_at() -> str:
    return events.format_timestamp(dt.datetime.now(dt.timezone.utc))


class Stream(Protocol):
    """Where the pipeline hands a request's decoded events."""

    name: str  # the service: application, infrastructure, transaction

    def check(self, request: Request) -> None:
        """What the headers alone decide, before the body is read (raises Refusal)."""

    async def submit(self, decoded: Decoded, request: Request, trace: TraceContext, span: Span) -> Accepted:
        """Take the events (raises Refusal)."""


# -- records -------------------------------------------------------------------------------


def log_records(
    logs: Sequence[events.LogIn], trace_headers: Headers, own_headers: Sequence[Headers | None] | None = None
) -> tuple[list[Record], list[str]]:
    """Kafka records for validated log events: key = source, value = the event as JSON.

    ``own_headers`` (OTLP) gives an event the trace headers of its own log record instead of the request's.
    Built column by column: the values in one encoder call, the records in one ``map``.
    """
    now = received_at()
    event_ids = new_uuids(len(logs))
    LogRecord = events.LogRecord
    values = _values(
        [
            LogRecord(event_id, now, log.source, log.level, log.message, log.timestamp or now, log.attributes, log.traceId)
            for event_id, log in zip(event_ids, logs)
        ]
    )
    keys = [log.source.encode() for log in logs]
    return list(map(Record, keys, values, _headers(event_ids, trace_headers, own_headers))), event_ids


def metric_records(
    samples: Sequence[events.MetricIn], trace_headers: Headers, own_headers: Sequence[Headers | None] | None = None
) -> tuple[list[Record], list[str]]:
    """Kafka records for validated samples: key = host, value = the sample as JSON."""
    now = received_at()
    event_ids = new_uuids(len(samples))
    MetricRecord = events.MetricRecord
    values = _values(
        [
            MetricRecord(event_id, now, s.host, s.metric, s.value, s.unit, s.labels, s.timestamp or now)
            for event_id, s in zip(event_ids, samples)
        ]
    )
    keys = [sample.host.encode() for sample in samples]
    return list(map(Record, keys, values, _headers(event_ids, trace_headers, own_headers))), event_ids


def _values(structs: list[Any]) -> list[bytes]:
    """Each struct as its JSON: one call encodes them all, one line each (JSON text holds no raw
    newline: msgspec escapes it in strings), split into the values."""
    values = _encode_lines(structs).split(b"\n")
    values.pop()  # after the last newline
    return values


def _headers(event_ids: list[str], trace_headers: Headers, own_headers: Sequence[Headers | None] | None) -> list[Headers]:
    """Each record's headers: its event id, then its own trace headers or else the request's."""
    if own_headers is None:
        return [[("event-id", event_id.encode()), *trace_headers] for event_id in event_ids]
    return [
        [("event-id", event_id.encode()), *(own or trace_headers)] for event_id, own in zip(event_ids, own_headers)
    ]


RecordBuilder = Callable[[Sequence[Any], Headers, Sequence[Headers | None] | None], tuple[list[Record], list[str]]]


def check_event_sizes(records: list[Record], max_event_bytes: int) -> None:
    """413 naming every event whose value is over the bound (the common case, none, is one pass in C)."""
    sizes = value_lengths(records)
    if not sizes or max(sizes) <= max_event_bytes:
        return
    too_large = [
        {"index": index, "message": f"the event encodes to {size} bytes, the limit is {max_event_bytes}"}
        for index, size in enumerate(sizes)
        if size > max_event_bytes
    ]
    raise Refusal(413, "event too large", too_large[: events.MAX_ERRORS_REPORTED])


class Breaker(Protocol):
    @property
    def reason(self) -> str | None: ...

    def retry_after(self) -> float: ...


class ProfileSink(Sink, Protocol):
    """A producer profile as a stream sees it: where records go, and its breaker for the 503's wait."""

    @property
    def breaker(self) -> Breaker: ...


class Spooler(Protocol):
    """A disk-mode stream's spool (:class:`app.spool.spool.Spool`)."""

    async def append(self, records: list[Record], size: int) -> None: ...


class ChannelStream:
    """Events into a producer profile's bounded buffer: 202 once taken, 503 when it cannot take them.

    With a ``spool`` (a disk-mode stream), 202 once the records are fsynced in it instead; the
    spool feeds the profile.
    """

    def __init__(
        self, profile: ProfileSink, build: RecordBuilder, *, retry_after_seconds: int, max_event_bytes: int,
        spool: Spooler | None = None,
    ) -> None:
        self.name = profile.name
        self.profile = profile
        self._build = build
        self._retry_after = str(retry_after_seconds)
        self._max_event_bytes = max_event_bytes
        self._spool = spool

    def check(self, request: Request) -> None:
        pass

    async def submit(self, decoded: Decoded, request: Request, trace: TraceContext, span: Span) -> Accepted:
        records, event_ids = self._build(decoded.events, trace.kafka_headers(), decoded.own_headers)
        acknowledgement = None
        if decoded.acknowledge:
            acknowledgement = Acknowledgement(len(records))
            for record in records:
                record.settlement = acknowledgement
        if self._spool is not None:
            check_event_sizes(records, self._max_event_bytes)
            with span.child("spool commit", len(records)):
                await self._spool.append(records, sized(records))
        else:
            self.send(records, span)
        return Accepted(event_ids, acknowledgement=acknowledgement)

    def send(self, records: list[Record], span: Span) -> None:
        """Hand the records to the profile; 413 or 503 (with Retry-After) when they cannot be taken."""
        check_event_sizes(records, self._max_event_bytes)
        outcome = span.enqueue(self.profile, records, sized(records))
        if outcome is Outcome.ACCEPTED:
            return
        profile = self.profile
        if outcome is Outcome.FULL:
            raise Refusal(
                503, "buffer full", f"the {profile.name} buffer is full; retry later",
                headers={"Retry-After": self._retry_after},
            )
        if outcome is Outcome.UNAVAILABLE:
            raise Refusal(
                503,
                "kafka unavailable",
                f"the {profile.name} circuit breaker is open ({profile.breaker.reason}); retry later",
                headers={"Retry-After": str(max(1, math.ceil(profile.breaker.retry_after())))},
            )
        raise Refusal(503, "shutting down", "this instance is shutting down", headers={"Retry-After": self._retry_after})


def channel_stream(settings: Settings, profile: ProfileSink, build: RecordBuilder, spool: Spooler | None) -> ChannelStream:
    """A log or metrics stream with the settings' Retry-After and event size bound."""
    return ChannelStream(
        profile, build, retry_after_seconds=settings.retry_after_seconds, max_event_bytes=settings.max_event_bytes,
        spool=spool,
    )


class TransactionStream:
    """Financial events committed into the PostgreSQL outbox (``writer`` None: no database configured)."""

    name = "transaction"

    def __init__(self, writer: OutboxWriter | None, *, topic: str, retry_after_seconds: int) -> None:
        self._writer = writer
        self._topic = topic
        self._retry_after = str(retry_after_seconds)

    def _unavailable(self, detail: str) -> Refusal:
        return Refusal(503, "outbox unavailable", detail, headers={"Retry-After": self._retry_after})

    def _writer_or_503(self) -> OutboxWriter:
        if self._writer is None:
            raise self._unavailable("DATABASE_URL is not set: transactions need the PostgreSQL outbox")
        return self._writer

    def check(self, request: Request) -> None:
        """503 without a database, 400 for an Idempotency-Key out of bounds."""
        self._writer_or_503()
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise Refusal(400, "invalid Idempotency-Key", f"it must have 1 to {MAX_IDEMPOTENCY_KEY} characters")

    async def submit(self, decoded: Decoded, request: Request, trace: TraceContext, span: Span) -> Accepted:
        writer = self._writer_or_503()
        now = received_at()
        # A batch's items carry their own keys; one transaction takes the request's.
        header_key = request.headers.get("idempotency-key")
        entries = [
            self._entry(t, getattr(t, "idempotencyKey", header_key), trace, now) for t in decoded.events
        ]
        with span.child("outbox commit", len(entries)):
            accepted = await self._commit(writer, entries)
        headers = {"Idempotent-Replayed": "true"} if all(a.replayed for a in accepted) else {}
        return Accepted([str(a.event_id) for a in accepted], headers)

    async def _commit(self, writer: OutboxWriter, entries: list[OutboxEntry]) -> list[Committed]:
        try:
            return await writer.write(entries)
        except IdempotencyConflict as error:
            raise Refusal(409, "idempotency key conflict", str(error)) from None
        except (OutboxUnavailable, RetryableConflict) as error:
            raise self._unavailable(str(error)) from None
        except OutboxError as error:
            # PostgreSQL refused it for what it is, not for an outage: a bug, logged and counted by the writer.
            raise Refusal(500, "outbox error", str(error)) from None

    def _entry(self, transaction: events.TransactionIn, key: str | None, trace: TraceContext, now: str) -> OutboxEntry:
        event_id = uuid.uuid4()
        fields = {
            f: getattr(transaction, f)
            for f in ("userId", "type", "amount", "currency", "description", "metadata", "occurredAt")
        }
        request_hash = hashlib.sha256(_canonical(fields)).digest()
        value = _encode(
            events.TransactionRecord(
                eventId=str(event_id),
                receivedAt=now,
                userId=transaction.userId,
                type=transaction.type,
                amount=transaction.amount,
                currency=transaction.currency,
                occurredAt=events.format_timestamp(transaction.occurredAt) if transaction.occurredAt else now,
                description=transaction.description,
                metadata=transaction.metadata,
            )
        )
        headers = [("event-id", str(event_id).encode()), *trace.kafka_headers()]
        if key is not None:
            headers.append(("idempotency-key", key.encode()))
        return OutboxEntry(event_id, self._topic, transaction.userId.encode(), value, headers, key, request_hash)

    async def status(self, event_id: str) -> dict[str, Any]:
        """Where a transaction stands: pending or published (404 when unknown, 503 without the database)."""
        writer = self._writer_or_503()
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            raise Refusal(404, "not found", "no transaction has that event id") from None
        try:
            status = await writer.status(parsed)
        except DatabaseUnavailable as error:
            raise self._unavailable(str(error)) from None
        except OutboxError as error:
            raise Refusal(500, "outbox error", str(error)) from None
        if status is None:
            raise Refusal(404, "not found", "no transaction has that event id (or it was purged after retention)")
        answer: dict[str, Any] = {
            "eventId": str(status.event_id),
            "status": "published" if status.published_at else "pending",
            "acceptedAt": events.format_timestamp(status.created_at),
            "topic": status.topic,
        }
        if status.published_at:
            answer.update(
                publishedAt=events.format_timestamp(status.published_at),
                partition=status.partition,
                offset=status.offset,
            )
        return answer
