"""OTLP/HTTP: export requests decoded (binary protobuf or the OTLP JSON mapping) and mapped onto events.

One decode per request, by the official ``opentelemetry-proto`` messages; then each log record
becomes a :class:`events.LogIn` and each gauge or sum data point a :class:`events.MetricIn`, so
the rest of the path is the one of the JSON routes. Records that cannot become events are
counted as rejected and reported in the response's ``partial_success``, as the protocol asks.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from app import events
from app.core import Headers

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"

M = TypeVar("M", bound=Message)

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode

# severity_number ranges of the OpenTelemetry log data model, four numbers per level.
SEVERITY_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_TEXT: Final = {
    **{level: level for level in SEVERITY_LEVELS},
    "WARNING": "WARN",
    "ERR": "ERROR",
    "CRITICAL": "FATAL",
    "ALERT": "FATAL",
    "EMERGENCY": "FATAL",
    "PANIC": "FATAL",
    "NOTICE": "INFO",
    "INFORMATION": "INFO",
}
_MAX_REJECTION_REASONS: Final = 5
_NO_TRACE_ID: Final = bytes(16)
_NO_SPAN_ID: Final = bytes(8)

# google.rpc.Code of each HTTP refusal, for the Status body OTLP/HTTP answers errors with.
_RPC_CODES: Final = {
    400: 3, 401: 16, 404: 5, 405: 12, 408: 4, 413: 3, 415: 3, 422: 3, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4,
}


class InvalidExport(ValueError):
    """The body is not an export request of the signal (malformed protobuf or JSON): answered 400."""


class TooManyRecords(ValueError):
    """The request holds more records than a batch may: answered 413."""


def decode(body: bytes, media_type: str, message: M) -> M:
    """Parse ``body`` into ``message``: binary protobuf, or OTLP JSON with its hex trace and span ids."""
    try:
        if media_type == PROTOBUF:
            message.ParseFromString(body)
        else:
            document = _decode_json(body)
            if not isinstance(document, dict):
                raise InvalidExport("an OTLP JSON export request is an object")
            _ids_to_base64(document)
            # Unknown fields are ignored, as the OTLP JSON mapping asks of receivers.
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, msgspec.DecodeError, RecursionError, UnicodeDecodeError) as error:
        raise InvalidExport(str(error) or type(error).__name__) from None
    return message


_ID_KEYS: Final = ("traceId", "spanId", "trace_id", "span_id")


def _ids_to_base64(node: Any) -> None:
    """OTLP JSON writes trace and span ids in hex, not the base64 of protobuf's JSON: convert them in place.

    Ids sit on log records and metric exemplars; the walk skips attributes and bodies, which
    hold none.
    """
    if isinstance(node, list):
        for item in node:
            _ids_to_base64(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _ID_KEYS and isinstance(value, str):
            try:
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise InvalidExport(f"{key} {value[:40]!r} is not hex") from None
        elif key not in ("attributes", "body") and isinstance(value, (dict, list)):
            _ids_to_base64(value)


def any_value(value: AnyValue) -> Any:
    """An AnyValue as plain JSON-able Python (bytes as base64, like the OTLP JSON mapping)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """Repeated KeyValue as a dict (the last of a repeated key wins)."""
    result: dict[str, Any] = {}
    for pair in pairs:
        value = pair.value
        result[pair.key] = value.string_value if value.WhichOneof("value") == "string_value" else any_value(value)
    return result


def _timestamp(unix_nano: int) -> dt.datetime | None:
    # Seconds and microseconds apart: a timedelta of ~10^15 microseconds alone costs twice as much.
    if not unix_nano:
        return None
    return _EPOCH + dt.timedelta(0, unix_nano // 1_000_000_000, unix_nano % 1_000_000_000 // 1000)


def level(severity_number: int, severity_text: str) -> str:
    """The event level: by severity_number (1-24), else the severity_text, else INFO."""
    if 1 <= severity_number <= 24:
        return SEVERITY_LEVELS[(severity_number - 1) // 4]
    return _SEVERITY_TEXT.get(severity_text.strip().upper(), "INFO")


def _string(value: Any) -> str:
    return value if isinstance(value, str) else _encode_json(value).decode()


@dataclass
class Rejections:
    """Records that did not become events, and why (the first few reasons)."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, count: int, reason: str) -> None:
        if count <= 0:
            return
        self.count += count
        if reason not in self.reasons and len(self.reasons) < _MAX_REJECTION_REASONS:
            self.reasons.append(reason)

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class LogEvents:
    """The events of an OTLP logs export: per event, its own trace headers (None: the request's)."""

    logs: list[events.LogIn] = field(default_factory=list)
    headers: list[Headers | None] = field(default_factory=list)
    rejected: Rejections = field(default_factory=Rejections)


def _check_count(count: int, max_events: int) -> None:
    if count > max_events:
        raise TooManyRecords(f"an export request holds at most {max_events} records, this one has {count}")


def log_events(export: ExportLogsServiceRequest, max_events: int) -> LogEvents:
    """Map every log record of the export onto a log event; the ones that cannot be, rejected."""
    _check_count(
        sum(len(scope.log_records) for resource in export.resource_logs for scope in resource.scope_logs), max_events
    )
    result = LogEvents()
    logs, headers, rejected = result.logs, result.headers, result.rejected
    for resource_logs in export.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        source = resource.get("service.name")
        source = source if isinstance(source, str) and source else "unknown"
        if len(source) > 255:
            rejected.add(
                sum(len(scope.log_records) for scope in resource_logs.scope_logs), "service.name is over 255 characters"
            )
            continue
        for scope_logs in resource_logs.scope_logs:
            scope: dict[str, Any] = {}
            if scope_logs.scope.name:
                scope["name"] = scope_logs.scope.name
            if scope_logs.scope.version:
                scope["version"] = scope_logs.scope.version
            if scope_logs.scope.attributes:
                scope["attributes"] = attributes(scope_logs.scope.attributes)
            for record in scope_logs.log_records:
                body = record.body
                kind = body.WhichOneof("value")
                message = body.string_value if kind == "string_value" else _string(any_value(body)) if kind else ""
                if not message:
                    rejected.add(1, "a log record without a body")
                    continue
                extra = attributes(record.attributes)
                if resource:
                    extra["resource"] = resource
                if scope:
                    extra["scope"] = scope
                trace_id, span_id = record.trace_id, record.span_id
                trace_hex = trace_id.hex() if len(trace_id) == 16 and trace_id != _NO_TRACE_ID else None
                logs.append(
                    events.LogIn(
                        source=source,
                        level=level(record.severity_number, record.severity_text),
                        message=message,
                        timestamp=_timestamp(record.time_unix_nano or record.observed_time_unix_nano),
                        attributes=extra or None,
                        traceId=trace_hex,
                    )
                )
                headers.append(
                    [("traceparent", f"00-{trace_hex}-{span_id.hex()}-{record.flags & 0xFF:02x}".encode())]
                    if trace_hex and len(span_id) == 8 and span_id != _NO_SPAN_ID
                    else None
                )
    return result


@dataclass
class MetricEvents:
    """The samples of an OTLP metrics export."""

    samples: list[events.MetricIn] = field(default_factory=list)
    rejected: Rejections = field(default_factory=Rejections)


def metric_events(export: ExportMetricsServiceRequest, max_events: int) -> MetricEvents:
    """Map gauge and sum data points onto samples; histogram and summary points are rejected."""
    count = 0
    for resource_metrics in export.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    count += len(getattr(metric, kind).data_points)
    _check_count(count, max_events)
    result = MetricEvents()
    rejected = result.rejected
    for resource_metrics in export.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        host = resource.get("host.name") or resource.get("service.name")
        host = host if isinstance(host, str) and host else "unknown"
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                points = getattr(metric, kind).data_points
                if kind not in ("gauge", "sum"):
                    rejected.add(len(points), f"{kind} points are not supported (only gauge and sum)")
                    continue
                problem = _metric_problem(host, metric.name, metric.unit)
                if problem:
                    rejected.add(len(points), problem)
                    continue
                for point in points:
                    value_kind = point.WhichOneof("value")
                    value = point.as_double if value_kind == "as_double" else float(point.as_int)
                    labels = {pair.key: _string(any_value(pair.value)) for pair in point.attributes}
                    if value_kind is None:
                        rejected.add(1, "a data point without a value")
                    elif not math.isfinite(value):
                        rejected.add(1, "a data point with a value that is not finite")
                    elif len(labels) > events.MAX_LABELS or any(
                        not 1 <= len(key) <= 128 or len(label) > 1024 for key, label in labels.items()
                    ):
                        rejected.add(1, "a data point with over 64 attributes, or one over its length limit")
                    else:
                        result.samples.append(
                            events.MetricIn(
                                host=host,
                                metric=metric.name,
                                value=value,
                                unit=metric.unit,
                                labels=labels,
                                timestamp=_timestamp(point.time_unix_nano),
                            )
                        )
    return result


def _metric_problem(host: str, name: str, unit: str) -> str | None:
    """The limits of the metric event schema a whole metric breaks, if any."""
    if len(host) > 255:
        return "host.name (or service.name) is over 255 characters"
    if not 1 <= len(name) <= 255:
        return "a metric name is empty or over 255 characters"
    if len(unit) > 32:
        return "a metric unit is over 32 characters"
    return None


def encode(message: Message, media_type: str) -> bytes:
    """A message in the request's encoding (JSON with lowerCamelCase names)."""
    if media_type == PROTOBUF:
        return bytes(message.SerializeToString())
    return json_format.MessageToJson(message, indent=None).encode()


def logs_response(rejected: Rejections) -> ExportLogsServiceResponse:
    response = ExportLogsServiceResponse()
    if rejected.count:
        response.partial_success.rejected_log_records = rejected.count
        response.partial_success.error_message = rejected.message
    return response


def metrics_response(rejected: Rejections) -> ExportMetricsServiceResponse:
    response = ExportMetricsServiceResponse()
    if rejected.count:
        response.partial_success.rejected_data_points = rejected.count
        response.partial_success.error_message = rejected.message
    return response


def status(http_status: int, message: str) -> Status:
    """The google.rpc.Status OTLP/HTTP answers a refusal with."""
    return Status(code=_RPC_CODES.get(http_status, 2), message=message)
