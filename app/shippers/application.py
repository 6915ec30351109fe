"""The application-log shipper (8081): single and batch log ingest on the application profile,
OTLP/HTTP logs, and Python's ``logging.handlers.HTTPHandler``."""

from __future__ import annotations

import ast
import datetime as dt
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from quart import Response, request
from quart_trio import QuartTrio

from app import events, otlp
from app.admission import Admission
from app.config import Settings
from app.http import openapi
from app.http.body import media_type, read_body
from app.http.errors import HTTPError
from app.ids import new_uuids
from app.kafka.producer import Headers, Record
from app.observability.tracing import TraceContext
from app.shippers.ingest import (
    EventKind,
    EventRoutes,
    Submitter,
    decode_or_raise,
    received_at,
    request_trace,
)
from app.shippers.otlp import OTLPRoute, Prepared, openapi_path

LOGS_ROUTE = "/api/v1/logs"
LOGS_BATCH_ROUTE = "/api/v1/logs/batch"
OTLP_LOGS_ROUTE = "/v1/logs"
PYTHON_LOGS_ROUTE = "/api/v1/logs/python"
FORM: Final = "application/x-www-form-urlencoded"

_encode = msgspec.json.Encoder().encode


def log_records(
    logs: list[events.LogIn], trace: TraceContext, own_headers: Sequence[Headers | None] | None = None
) -> tuple[list[Record], list[str]]:
    """Kafka records for validated events: key = source, value = the event as JSON.

    ``own_headers`` (OTLP) gives an event the trace headers of its own log record instead of the request's.
    """
    now = received_at()
    trace_headers = trace.kafka_headers()
    event_ids = new_uuids(len(logs))
    records: list[Record] = []
    append = records.append
    LogRecord, encode = events.LogRecord, _encode
    for index, log in enumerate(logs):
        headers = (own_headers[index] if own_headers is not None else None) or trace_headers
        event_id = event_ids[index]
        value = encode(
            LogRecord(event_id, now, log.source, log.level, log.message, log.timestamp or now, log.attributes, log.traceId)
        )
        append(Record(log.source.encode(), value, [("event-id", event_id.encode()), *headers]))
    return records, event_ids


def prepare_otlp_logs(body: bytes, kind: str, max_events: int) -> Prepared:
    """An OTLP logs export as log events, each with its record's own trace context when it has one."""
    mapped = otlp.log_events(otlp.decode(body, kind, ExportLogsServiceRequest()), max_events)
    return Prepared(
        len(mapped.logs),
        lambda trace: log_records(mapped.logs, trace, mapped.headers)[0],
        otlp.logs_response(mapped.rejected),
    )


# LogRecord fields of Python's logging kept as attributes; integers are sent as their text.
_PYTHON_ATTRIBUTES: Final = ("pathname", "module", "funcName", "lineno", "process", "processName", "threadName")
_PYTHON_INTEGERS: Final = frozenset({"lineno", "process"})
_MAX_ARGS_CHARS: Final = 10_000
# A conversion with a 4-digit (or argument-given) width or precision: "%999999999d" would take a GB.
_WIDE_CONVERSION: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d{4,}|\d*\.(?:\*|\d{4,}))")


def _python_level(fields: dict[str, str]) -> str:
    try:
        number = int(fields.get("levelno", ""))
    except ValueError:
        return otlp.level(0, fields.get("levelname", ""))
    return otlp.SEVERITY_LEVELS[min(max(number // 10, 0), 5)] if number else "INFO"


def _python_message(fields: dict[str, str]) -> str | None:
    """``message`` when a Formatter set it; else ``msg % args``, the args being sent as their repr."""
    if fields.get("message"):
        return fields["message"]
    msg = fields.get("msg")
    args = fields.get("args", "None")
    if msg is None or args in ("None", "()", "{}") or len(args) > _MAX_ARGS_CHARS or _WIDE_CONVERSION.search(msg):
        return msg
    try:
        return str(msg % ast.literal_eval(args))
    except (ValueError, TypeError, SyntaxError, KeyError, MemoryError, RecursionError):
        return msg  # args that are no Python literal (objects' reprs) cannot be applied


def decode_python_log(body: bytes) -> events.LogIn:
    """One log event from the form ``logging.handlers.HTTPHandler`` posts: a LogRecord's ``__dict__``."""
    try:
        fields = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=200))
    except (UnicodeDecodeError, ValueError) as error:
        raise HTTPError(400, "malformed form body", str(error)) from None
    event: dict[str, Any] = {"level": _python_level(fields)}
    if "name" in fields:
        event["source"] = fields["name"]
    message = _python_message(fields)
    if message is not None:
        event["message"] = message
    try:
        event["timestamp"] = dt.datetime.fromtimestamp(float(fields["created"]), dt.timezone.utc)
    except (KeyError, ValueError, OverflowError, OSError):
        pass  # stamped on receipt
    attributes: dict[str, Any] = {}
    for name in _PYTHON_ATTRIBUTES:
        if name in fields:
            value = fields[name]
            # isdecimal, not isdigit: "²" is a digit that int() refuses.
            attributes[name] = int(value) if name in _PYTHON_INTEGERS and value.isdecimal() else value
    for name in ("exc_text", "stack_info"):
        if fields.get(name) not in (None, "", "None"):
            attributes[name] = fields[name]
    if attributes:
        event["attributes"] = attributes
    try:
        return msgspec.convert(event, events.LogIn)
    except msgspec.ValidationError as error:
        raise events.InvalidEvents([{"message": str(error)}]) from None


ROUTES = [(LOGS_ROUTE, "POST"), (LOGS_BATCH_ROUTE, "POST"), (OTLP_LOGS_ROUTE, "POST"), (PYTHON_LOGS_ROUTE, "POST")]

_PYTHON_FORM_SCHEMA: Final = {
    "type": "object",
    "description": "a logging.LogRecord's __dict__, as logging.handlers.HTTPHandler posts it",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "msg": {"type": "string", "minLength": 1},
        **{
            name: {"type": "string"}
            for name in ("args", "levelname", "levelno", "created", "message", *_PYTHON_ATTRIBUTES)
        },
    },
    "required": ["name", "msg"],
}


def openapi_paths() -> dict[str, Any]:
    return {
        **openapi.event_routes(LOGS_ROUTE, LOGS_BATCH_ROUTE, "application log event", "LogIn", "LogBatch"),
        OTLP_LOGS_ROUTE: openapi_path(
            "OTLP/HTTP logs export (ExportLogsServiceRequest); one event per log record",
            {"resourceLogs": {"type": "array", "items": {"type": "object"}}},
            "rejectedLogRecords",
        ),
        PYTHON_LOGS_ROUTE: openapi.ingest(
            "one record from Python's logging.handlers.HTTPHandler (method POST)",
            {FORM: {"schema": _PYTHON_FORM_SCHEMA}},
            "Accepted",
        ),
    }


LOGS = EventKind(
    "log", events.decode_log, events.decode_log_batch, events.decode_log_ndjson, log_records
)


class ApplicationShipper:
    """Routes of the application-log shipper, bound to its producer profile."""

    def __init__(self, settings: Settings, submitter: Submitter, admission: Admission) -> None:
        self._settings = settings
        self._submitter = submitter
        self._admission = admission
        self.routes = EventRoutes(settings, LOGS, submitter, admission)
        self.otlp = OTLPRoute(settings, submitter, admission, prepare_otlp_logs)

    def register(self, app: QuartTrio) -> None:
        self.routes.register(app, LOGS_ROUTE, LOGS_BATCH_ROUTE)
        app.add_url_rule(OTLP_LOGS_ROUTE, "post_otlp_logs", self.otlp.post, methods=["POST"])
        app.add_url_rule(PYTHON_LOGS_ROUTE, "post_python_log", self.post_python_log, methods=["POST"])
        openapi.add_paths(app, openapi_paths())

    async def post_python_log(self) -> Response:
        """One HTTPHandler record: answered like ``POST /api/v1/logs``."""
        key = self._admission.authenticate(request.headers.get("Authorization"))
        media_type(request, {FORM})
        body = await read_body(
            request,
            max_bytes=self._settings.max_request_bytes,
            max_decompressed_bytes=self._settings.max_decompressed_bytes,
        )
        self._admission.admit(key, 1)
        event = decode_or_raise(lambda: decode_python_log(body))
        trace = request_trace()
        records, event_ids = log_records([event], trace)
        return self._submitter.submit(records, event_ids, trace, single=True)
