"""OTLP/HTTP (``/v1/logs``, ``/v1/metrics``): export requests in binary protobuf or OTLP JSON.

Success is 200 with the signal's export response (``partial_success`` counting the records that
could not become events); a refusal is a ``google.rpc.Status`` body, both in the request's
encoding. 429 and 503 keep their ``Retry-After``: OTLP's signal to wait that long before retrying.
The mapping of records onto events is :mod:`app.otlp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from app import otlp
from app.core import Refusal
from app.dialects.base import Accepted, Answer, Decoded, Limits, Request

MEDIA_TYPES: Final = frozenset({otlp.PROTOBUF, otlp.JSON})


def _decode_logs(body: bytes, media_type: str, max_events: int) -> Decoded:
    mapped = otlp.log_events(otlp.decode(body, media_type, ExportLogsServiceRequest()), max_events)
    return Decoded(mapped.logs, mapped.headers, otlp.logs_response(mapped.rejected))


def _decode_metrics(body: bytes, media_type: str, max_events: int) -> Decoded:
    mapped = otlp.metric_events(otlp.decode(body, media_type, ExportMetricsServiceRequest()), max_events)
    return Decoded(mapped.samples, None, otlp.metrics_response(mapped.rejected))


class Export:
    """One signal's export route: logs (one event per log record) or metrics (per gauge or sum point)."""

    name = "otlp"
    media_types = MEDIA_TYPES

    def __init__(
        self, signal: str, decode: Callable[[bytes, str, int], Decoded], summary: str, root: str, rejected_field: str
    ) -> None:
        self.signal = signal
        self._decode = decode
        self._summary = summary
        self._root = root
        self._rejected_field = rejected_field

    def authorization(self, request: Request) -> str | None:
        return request.headers.get("authorization")

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        try:
            return self._decode(body, request.media_type, limits.max_events)
        except otlp.InvalidExport as error:
            raise Refusal(400, "malformed export request", str(error)) from None
        except otlp.TooManyRecords as error:
            raise Refusal(413, "too many events", str(error)) from None

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        response: Message = decoded.state
        return Answer(200, otlp.encode(response, request.media_type), request.media_type, accepted.headers)

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        media = _answer_type(request)
        body = otlp.encode(otlp.status(refusal.status, refusal.describe()), media)
        return Answer(refusal.status, body, media, refusal.headers)

    def operation(self) -> dict[str, Any]:
        return _operation(self._summary, {self._root: {"type": "array", "items": {"type": "object"}}}, self._rejected_field)


def _answer_type(request: Request) -> str:
    """A refusal is answered in the request's encoding; JSON when that is not one of OTLP's."""
    requested = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    return otlp.PROTOBUF if requested == otlp.PROTOBUF else otlp.JSON


LOGS = Export(
    "logs", _decode_logs, "OTLP/HTTP logs export (ExportLogsServiceRequest); one event per log record",
    "resourceLogs", "rejectedLogRecords",
)
METRICS = Export(
    "metrics", _decode_metrics,
    "OTLP/HTTP metrics export (ExportMetricsServiceRequest); one event per gauge or sum data point",
    "resourceMetrics", "rejectedDataPoints",
)


_STATUS_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    },
}
_BINARY: Final = {"type": "string", "format": "binary"}
_INT64: Final = {"type": ["string", "integer"]}
_REFUSALS: Final = {
    "400": "malformed protobuf, JSON or gzip",
    "401": "no valid API key (when keys are configured)",
    "413": "body, decompressed body, record count or an event over its limit",
    "415": "unsupported Content-Type or Content-Encoding",
    "429": "over the rate limit; see Retry-After",
    "503": "cannot take events now (buffer full, breaker open); see Retry-After",
}


def _operation(summary: str, request_properties: dict[str, Any], rejected_field: str) -> dict[str, Any]:
    """An OTLP export operation: protobuf bodies as binary strings, JSON ones as objects."""

    def content(json_schema: dict[str, Any]) -> dict[str, Any]:
        return {otlp.PROTOBUF: {"schema": _BINARY}, otlp.JSON: {"schema": json_schema}}

    export_response = {
        "type": "object",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "properties": {rejected_field: _INT64, "errorMessage": {"type": "string"}},
            }
        },
    }
    responses: dict[str, Any] = {"200": {"description": "exported (see partialSuccess)", "content": content(export_response)}}
    for status, description in sorted(_REFUSALS.items()):
        responses[status] = {"description": f"{description}; a google.rpc.Status", "content": content(_STATUS_SCHEMA)}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": content({"type": "object", "properties": request_properties})},
            "responses": responses,
        }
    }
