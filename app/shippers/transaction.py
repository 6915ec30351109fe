"""The transaction shipper (8083): financial events through the PostgreSQL outbox.

202 means committed in PostgreSQL; the relay publishes to Kafka exactly once from there.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from quart import Response, g, request
from quart_trio import QuartTrio

from app import events
from app.admission import Admission
from app.config import Settings
from app.db.database import DatabaseUnavailable
from app.db.outbox import Accepted, IdempotencyConflict, OutboxEntry, RetryableConflict
from app.http import openapi
from app.http.body import JSON, media_type, read_body
from app.http.errors import HTTPError, json_response
from app.observability.tracing import TraceContext
from app.outbox.writer import OutboxUnavailable, OutboxWriter
from app.shippers.ingest import decode_or_raise, received_at, request_trace

if TYPE_CHECKING:
    from app.observability.otel import RequestSpan

TRANSACTIONS_ROUTE = "/api/v1/transactions"
TRANSACTIONS_BATCH_ROUTE = "/api/v1/transactions/batch"
MAX_IDEMPOTENCY_KEY = 255

_canonical = msgspec.json.Encoder(order="sorted").encode


ROUTES = [(TRANSACTIONS_ROUTE, "POST"), (TRANSACTIONS_BATCH_ROUTE, "POST"), (f"{TRANSACTIONS_ROUTE}/<event_id>", "GET")]


def openapi_paths() -> dict[str, Any]:
    error = {"content": {JSON: {"schema": openapi.ref("ErrorAnswer")}}}
    return {
        TRANSACTIONS_ROUTE: openapi.ingest(
            "one financial event, answered once committed", {JSON: {"schema": openapi.ref("TransactionIn")}},
            "Accepted", conflict=True,
        ),
        TRANSACTIONS_BATCH_ROUTE: openapi.ingest(
            "financial events, all or nothing", {JSON: {"schema": openapi.ref("TransactionBatch")}},
            "BatchAccepted", conflict=True,
        ),
        f"{TRANSACTIONS_ROUTE}/{{eventId}}": {
            "get": {
                "summary": "where a transaction stands",
                "parameters": [{"name": "eventId", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "pending or published", "content": {JSON: {"schema": openapi.ref("TransactionStatus")}}},
                    "401": {"description": "no valid API key", **error},
                    "404": {"description": "no such event", **error},
                    "503": {"description": "database unavailable", **error},
                },
            }
        },
    }


class TransactionShipper:
    """Routes of the transaction shipper, bound to the outbox writer (None: no database configured)."""

    def __init__(self, settings: Settings, writer: OutboxWriter | None, admission: Admission) -> None:
        self._settings = settings
        self._writer = writer
        self._admission = admission
        self._topic = settings.transaction.topic
        self._encoder = msgspec.json.Encoder()
        self._retry_after = str(settings.retry_after_seconds)

    def register(self, app: QuartTrio) -> None:
        app.add_url_rule(TRANSACTIONS_ROUTE, "post_transaction", self.post_transaction, methods=["POST"])
        app.add_url_rule(
            TRANSACTIONS_BATCH_ROUTE, "post_transaction_batch", self.post_transaction_batch, methods=["POST"]
        )
        app.add_url_rule(
            f"{TRANSACTIONS_ROUTE}/<event_id>", "get_transaction", self.get_transaction, methods=["GET"]
        )
        openapi.add_paths(app, openapi_paths())

    def _unavailable(self, detail: str) -> HTTPError:
        return HTTPError(503, "outbox unavailable", detail, headers={"Retry-After": self._retry_after})

    def _writer_or_503(self) -> OutboxWriter:
        if self._writer is None:
            raise self._unavailable("DATABASE_URL is not set: transactions need the PostgreSQL outbox")
        return self._writer

    async def _body(self) -> bytes:
        media_type(request, {JSON})
        return await read_body(
            request,
            max_bytes=self._settings.max_request_bytes,
            max_decompressed_bytes=self._settings.max_decompressed_bytes,
        )

    async def post_transaction(self) -> Response:
        api_key = self._admission.authenticate(request.headers.get("Authorization"))
        writer = self._writer_or_503()
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise HTTPError(400, "invalid Idempotency-Key", f"it must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
        body = await self._body()
        self._admission.admit(api_key, 1)  # one event: refused before decoding
        transaction = decode_or_raise(lambda: events.decode_transaction(body))
        trace = request_trace()
        [accepted] = await self._write(writer, [self._entry(transaction, key, trace, received_at())])
        return self._answer(trace, [accepted], single=True)

    async def post_transaction_batch(self) -> Response:
        api_key = self._admission.authenticate(request.headers.get("Authorization"))
        writer = self._writer_or_503()
        body = await self._body()
        limit = self._settings.max_batch_events
        transactions = decode_or_raise(lambda: events.decode_transaction_batch(body, limit))
        self._admission.admit(api_key, len(transactions))
        trace = request_trace()
        now = received_at()
        entries = [self._entry(t, t.idempotencyKey, trace, now) for t in transactions]
        accepted = await self._write(writer, entries)
        return self._answer(trace, accepted, single=False)

    async def get_transaction(self, event_id: str) -> Response:
        self._admission.authenticate(request.headers.get("Authorization"))
        writer = self._writer_or_503()
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            raise HTTPError(404, "not found", "no transaction has that event id") from None
        try:
            status = await writer.status(parsed)
        except DatabaseUnavailable as error:
            raise self._unavailable(str(error)) from None
        if status is None:
            raise HTTPError(404, "not found", "no transaction has that event id (or it was purged after retention)")
        answer: dict[str, object] = {
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
        return json_response(answer, 200)

    async def _write(self, writer: OutboxWriter, entries: list[OutboxEntry]) -> list[Accepted]:
        span: RequestSpan | None = g.get("span")  # set only when tracing is on
        if span is None:
            return await self._commit(writer, entries)
        span.span.set_attribute("events", len(entries))
        with span.child("outbox commit") as commit:
            commit.set_attribute("events", len(entries))
            return await self._commit(writer, entries)

    async def _commit(self, writer: OutboxWriter, entries: list[OutboxEntry]) -> list[Accepted]:
        try:
            return await writer.write(entries)
        except IdempotencyConflict as error:
            raise HTTPError(409, "idempotency key conflict", str(error)) from None
        except (OutboxUnavailable, RetryableConflict) as error:
            raise self._unavailable(str(error)) from None

    def _entry(self, transaction: events.TransactionIn, key: str | None, trace: TraceContext, now: str) -> OutboxEntry:
        event_id = uuid.uuid4()
        fields = {
            f: getattr(transaction, f)
            for f in ("userId", "type", "amount", "currency", "description", "metadata", "occurredAt")
        }
        request_hash = hashlib.sha256(_canonical(fields)).digest()
        value = self._encoder.encode(
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

    def _answer(self, trace: TraceContext, accepted: Sequence[Accepted], *, single: bool) -> Response:
        headers = {"traceparent": trace.traceparent}
        if all(a.replayed for a in accepted):
            headers["Idempotent-Replayed"] = "true"
        if single:
            return json_response({"status": "accepted", "eventId": str(accepted[0].event_id)}, 202, headers)
        ids = [str(a.event_id) for a in accepted]
        return json_response({"status": "accepted", "count": len(ids), "eventIds": ids}, 202, headers)
