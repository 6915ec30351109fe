"""The transaction shipper (8083): financial events through the PostgreSQL outbox.

202 means committed in PostgreSQL; the relay publishes to Kafka exactly once from there.
``GET /api/v1/transactions/{eventId}`` tells where one transaction stands.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.dialects import native
from app.dialects.base import JSON, Answer, Request, json_answer, ref
from app.http.routes import Route
from app.outbox.writer import OutboxWriter
from app.streams import Stream, TransactionStream

NAME = "transaction"


class Status:
    """Where a transaction stands: pending, or published with its partition and offset."""

    async def respond(self, stream: Stream, request: Request) -> Answer:
        assert isinstance(stream, TransactionStream)
        return json_answer(await stream.status(request.params["eventId"]), 200)

    def operation(self) -> dict[str, Any]:
        error = {"content": {JSON: {"schema": ref("ErrorAnswer")}}}
        return {
            "get": {
                "summary": "where a transaction stands",
                "parameters": [{"name": "eventId", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "pending or published", "content": {JSON: {"schema": ref("TransactionStatus")}}},
                    "401": {"description": "no valid API key", **error},
                    "404": {"description": "no such event", **error},
                    "503": {"description": "database unavailable", **error},
                },
            }
        }


ROUTES = (
    Route("POST", "/api/v1/transactions", NAME, native.Single(native.TRANSACTIONS)),
    Route("POST", "/api/v1/transactions/batch", NAME, native.Batch(native.TRANSACTIONS)),
    Route("GET", "/api/v1/transactions/{eventId}", NAME, view=Status()),
)


def stream(settings: Settings, writer: OutboxWriter | None) -> TransactionStream:
    return TransactionStream(writer, topic=settings.transaction.topic, retry_after_seconds=settings.retry_after_seconds)
