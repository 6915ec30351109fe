"""The application-log shipper (8081): single and batch log ingest on the application profile."""

from __future__ import annotations

from typing import Any

import msgspec
from quart_trio import QuartTrio

from app import events
from app.admission import Admission
from app.config import Settings
from app.http import openapi
from app.http.body import JSON, NDJSON
from app.kafka.producer import Record
from app.observability.tracing import TraceContext
from app.shippers.ingest import EventKind, EventRoutes, Submitter, new_event_id, received_at

LOGS_ROUTE = "/api/v1/logs"
LOGS_BATCH_ROUTE = "/api/v1/logs/batch"

_encode = msgspec.json.Encoder().encode


def log_records(logs: list[events.LogIn], trace: TraceContext) -> tuple[list[Record], list[str]]:
    """Kafka records for validated events: key = source, value = the event as JSON."""
    now = received_at()
    trace_headers = trace.kafka_headers()
    records: list[Record] = []
    event_ids: list[str] = []
    for log in logs:
        event_id = new_event_id()
        value = _encode(
            events.LogRecord(
                eventId=event_id,
                receivedAt=now,
                source=log.source,
                level=log.level,
                message=log.message,
                timestamp=events.format_timestamp(log.timestamp) if log.timestamp else now,
                attributes=log.attributes,
                traceId=log.traceId,
            )
        )
        records.append(Record(log.source.encode(), value, [("event-id", event_id.encode()), *trace_headers]))
        event_ids.append(event_id)
    return records, event_ids


ROUTES = [(LOGS_ROUTE, "POST"), (LOGS_BATCH_ROUTE, "POST")]


def openapi_paths() -> dict[str, Any]:
    return {
        LOGS_ROUTE: openapi.ingest("one application log event", {JSON: {"schema": openapi.ref("LogIn")}}, "Accepted"),
        LOGS_BATCH_ROUTE: openapi.ingest(
            "a batch of application log events, all or nothing",
            {JSON: {"schema": openapi.ref("LogBatch")}, NDJSON: {"schema": {"type": "string"}}},
            "BatchAccepted",
        ),
    }


LOGS = EventKind(
    "log", events.decode_log, events.decode_log_batch, events.decode_log_ndjson, log_records
)


class ApplicationShipper:
    """Routes of the application-log shipper, bound to its producer profile."""

    def __init__(self, settings: Settings, submitter: Submitter, admission: Admission) -> None:
        self.routes = EventRoutes(settings, LOGS, submitter, admission)

    def register(self, app: QuartTrio) -> None:
        self.routes.register(app, LOGS_ROUTE, LOGS_BATCH_ROUTE)
        openapi.add_paths(app, openapi_paths())
