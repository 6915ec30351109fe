"""The transaction shipper (8083): financial events through the PostgreSQL outbox.

202 means committed in PostgreSQL; the relay publishes to Kafka exactly once from there.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from app import events
from app.admission import Admission
from app.auth import ApiKey
from app.config import Settings
from app.db.database import DatabaseUnavailable
from app.db.outbox import Accepted, IdempotencyConflict, OutboxEntry, RetryableConflict
from app.http import openapi
from app.http.body import JSON, check_media_type
from app.http.errors import HTTPError, json_response
from app.http.fastlane import Headers
from app.observability.tracing import TraceContext
from app.outbox.writer import OutboxUnavailable, OutboxWriter
from app.shippers.ingest import decode_or_raise, received_at, register_ingest

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
        register_ingest(app, self, self._settings, "transaction", TRANSACTIONS_ROUTE, TRANSACTIONS_BATCH_ROUTE)
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

    # -- the routes' work, free of any framework (Quart routes and the fast lane share it) --------

    def check(self, headers: Headers, *, batch: bool) -> tuple[ApiKey | None, str | None]:
        """What the headers alone decide (401, 503 without a database, 400, 415), before the body is read."""
        api_key = self._admission.authenticate(headers.get("authorization"))
        self._writer_or_503()
        # A batch's keys are its transactions' own.
        idempotency_key = None if batch else headers.get("idempotency-key")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise HTTPError(400, "invalid Idempotency-Key", f"it must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
        check_media_type(headers.get("content-type"), {JSON})
        return api_key, idempotency_key

    async def take(
        self, checked: tuple[ApiKey | None, str | None], body: bytes, trace: TraceContext, span: RequestSpan | None,
        *, batch: bool,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Admit, decode and commit a request's transactions; the payload and headers of its 202 answer."""
        api_key, key = checked
        writer = self._writer_or_503()
        now = received_at()
        if batch:
            limit = self._settings.max_batch_events
            transactions = decode_or_raise(lambda: events.decode_transaction_batch(body, limit))
            self._admission.admit(api_key, len(transactions))
            entries = [self._entry(t, t.idempotencyKey, trace, now) for t in transactions]
        else:
            self._admission.admit(api_key, 1)  # one event: refused before decoding
            transaction = decode_or_raise(lambda: events.decode_transaction(body))
            entries = [self._entry(transaction, key, trace, now)]
        accepted = await self._write(writer, entries, span)
        headers = {"Idempotent-Replayed": "true"} if all(a.replayed for a in accepted) else {}
        if not batch:
            return {"status": "accepted", "eventId": str(accepted[0].event_id)}, headers
        ids = [str(a.event_id) for a in accepted]
        return {"status": "accepted", "count": len(ids), "eventIds": ids}, headers

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

    async def _write(
        self, writer: OutboxWriter, entries: list[OutboxEntry], span: RequestSpan | None
    ) -> list[Accepted]:
        if span is None:  # tracing off
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


