"""The application-log shipper (8081): single and batch log ingest on the application profile."""

from __future__ import annotations

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from app import events
from app.admission import Admission
from app.config import Settings
from app.http import openapi
from app.http.body import JSON, NDJSON, media_type, read_body
from app.kafka.producer import Record
from app.observability.tracing import TraceContext
from app.shippers.ingest import Submitter, decode_or_raise, new_event_id, received_at, request_trace

LOGS_ROUTE = "/api/v1/logs"
LOGS_BATCH_ROUTE = "/api/v1/logs/batch"


class ApplicationShipper:
    """Routes of the application-log shipper, bound to its producer profile."""

    def __init__(self, settings: Settings, submitter: Submitter, admission: Admission) -> None:
        self._settings = settings
        self._submitter = submitter
        self._admission = admission
        self._encoder = msgspec.json.Encoder()

    def register(self, app: QuartTrio) -> None:
        app.add_url_rule(LOGS_ROUTE, "post_log", self.post_log, methods=["POST"])
        app.add_url_rule(LOGS_BATCH_ROUTE, "post_log_batch", self.post_log_batch, methods=["POST"])
        openapi.add_paths(
            app,
            {
                LOGS_ROUTE: openapi.ingest("one application log event", {JSON: {"schema": openapi.ref("LogIn")}}, "Accepted"),
                LOGS_BATCH_ROUTE: openapi.ingest(
                    "a batch of application log events, all or nothing",
                    {JSON: {"schema": openapi.ref("LogBatch")}, NDJSON: {"schema": {"type": "string"}}},
                    "BatchAccepted",
                ),
            },
        )

    async def _body(self) -> bytes:
        return await read_body(
            request,
            max_bytes=self._settings.max_request_bytes,
            max_decompressed_bytes=self._settings.max_decompressed_bytes,
        )

    async def post_log(self) -> Response:
        key = self._admission.authenticate()
        media_type(request, {JSON})
        body = await self._body()
        # One event: refused before decoding. (After reading the body: an unread body would
        # cost the client its keep-alive connection.)
        self._admission.admit(key, 1)
        event = decode_or_raise(lambda: events.decode_log(body))
        return self._submit([event], single=True)

    async def post_log_batch(self) -> Response:
        key = self._admission.authenticate()
        kind = media_type(request, {JSON, NDJSON})
        body = await self._body()
        limit = self._settings.max_batch_events
        if kind == NDJSON:
            logs = decode_or_raise(lambda: events.decode_log_ndjson(body, limit))
        else:
            logs = decode_or_raise(lambda: events.decode_log_batch(body, limit))
        self._admission.admit(key, len(logs))
        return self._submit(logs, single=False)

    def _submit(self, logs: list[events.LogIn], *, single: bool) -> Response:
        trace = request_trace()
        records, event_ids = self.records(logs, trace)
        return self._submitter.submit(records, event_ids, trace, single=single)

    def records(self, logs: list[events.LogIn], trace: TraceContext) -> tuple[list[Record], list[str]]:
        """Kafka records for validated events: key = source, value = the event as JSON."""
        now = received_at()
        trace_headers = trace.kafka_headers()
        encode = self._encoder.encode
        records: list[Record] = []
        event_ids: list[str] = []
        for log in logs:
            event_id = new_event_id()
            value = encode(
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
