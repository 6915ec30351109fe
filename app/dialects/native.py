"""The gateway's own JSON dialect: one event as a JSON object, or a batch as JSON or NDJSON.

Answers ``202 {"status": "accepted", "eventId": ...}`` for one event and
``202 {"status": "accepted", "count": n, "eventIds": [...]}`` for a batch; refusals are
``{"error": ..., "detail": ...}`` with their status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app import events
from app.core import Refusal
from app.dialects.base import (
    JSON,
    NDJSON,
    Accepted,
    Answer,
    Decoded,
    JSONDialect,
    Limits,
    Request,
    ingest_operation,
    json_answer,
    ref,
)


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of event as the native routes take it."""

    what: str  # in the OpenAPI summaries
    schema: str
    batch_schema: str
    decode_one: Callable[[bytes], Any]
    decode_batch: Callable[[bytes, int], list[Any]]
    decode_ndjson: Callable[[bytes, int], list[Any]] | None = None
    conflict: bool = False  # transactions: an Idempotency-Key reused with another body is a 409


LOGS = Kind(
    "application log event", "LogIn", "LogBatch", events.decode_log, events.decode_log_batch, events.decode_log_ndjson
)
METRICS = Kind(
    "host metric sample", "MetricIn", "MetricBatch",
    events.decode_metric, events.decode_metric_batch, events.decode_metric_ndjson,
)
TRANSACTIONS = Kind(
    "financial event", "TransactionIn", "TransactionBatch",
    events.decode_transaction, events.decode_transaction_batch, conflict=True,
)


def refusal_of(error: ValueError) -> Refusal:
    """The refusal for what :mod:`app.events` raises on a body it cannot take."""
    if isinstance(error, events.InvalidJSON):
        return Refusal(400, "malformed JSON", str(error))
    if isinstance(error, events.TooManyEvents):
        return Refusal(413, "too many events", str(error))
    if isinstance(error, events.InvalidEvents):
        return Refusal(422, "invalid event", error.errors)
    raise error


class Single(JSONDialect):
    """One event, a JSON object."""

    name = "native"
    media_types = frozenset({JSON})

    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        try:
            return Decoded([self._kind.decode_one(body)])
        except (events.InvalidJSON, events.InvalidEvents) as error:
            raise refusal_of(error) from None

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return json_answer({"status": "accepted", "eventId": accepted.event_ids[0]}, 202, accepted.headers)

    def operation(self) -> dict[str, Any]:
        kind = self._kind
        body = {JSON: {"schema": ref(kind.schema)}}
        summary = f"one {kind.what}" + (", answered once committed" if kind.conflict else "")
        return ingest_operation(summary, body, "Accepted", conflict=kind.conflict)


class Batch(JSONDialect):
    """Events of one kind, all or nothing: a JSON object holding their list, or NDJSON."""

    name = "native"

    def __init__(self, kind: Kind) -> None:
        self._kind = kind
        self.media_types = frozenset({JSON, NDJSON} if kind.decode_ndjson is not None else {JSON})

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        kind = self._kind
        decode = kind.decode_ndjson if request.media_type == NDJSON and kind.decode_ndjson else kind.decode_batch
        try:
            return Decoded(decode(body, limits.max_events))
        except (events.InvalidJSON, events.InvalidEvents, events.TooManyEvents) as error:
            raise refusal_of(error) from None

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        ids = accepted.event_ids
        return json_answer({"status": "accepted", "count": len(ids), "eventIds": ids}, 202, accepted.headers)

    def operation(self) -> dict[str, Any]:
        kind = self._kind
        body: dict[str, Any] = {JSON: {"schema": ref(kind.batch_schema)}}
        if kind.decode_ndjson is not None:
            body[NDJSON] = {"schema": {"type": "string"}}
        return ingest_operation(f"a batch of {kind.what}s, all or nothing", body, "BatchAccepted", conflict=kind.conflict)
