"""OTLP decoding and mapping, and the HTTPHandler form, without a broker."""

from __future__ import annotations

import json
import logging
import urllib.parse

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from app import events, otlp
from app.dialects.httphandler import decode_python_log


@pytest.mark.parametrize(
    ("number", "text", "expected"),
    [
        (1, "", "TRACE"), (4, "", "TRACE"), (5, "", "DEBUG"), (9, "", "INFO"), (12, "", "INFO"), (13, "", "WARN"),
        (17, "x", "ERROR"), (21, "", "FATAL"), (24, "", "FATAL"), (0, "Warning", "WARN"), (0, "critical", "FATAL"),
        (0, "", "INFO"), (25, "error", "ERROR"), (0, "whatever", "INFO"),
    ],
)
def test_level_from_severity(number: int, text: str, expected: str) -> None:
    assert otlp.level(number, text) == expected


def test_json_ids_are_hex_and_attribute_values_are_left_alone() -> None:
    body = json.dumps(
        {
            "resourceLogs": [
                {
                    "scopeLogs": [
                        {
                            "logRecords": [
                                {
                                    "traceId": "0102030405060708090a0b0c0d0e0f10",
                                    "spanId": "0102030405060708",
                                    "body": {"stringValue": "m"},
                                    "attributes": [{"key": "traceId", "value": {"stringValue": "not-hex"}}],
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    export = otlp.decode(body, otlp.JSON, ExportLogsServiceRequest())
    record = export.resource_logs[0].scope_logs[0].log_records[0]
    assert record.trace_id == bytes(range(1, 17)) and record.span_id == bytes(range(1, 9))
    mapped = otlp.log_events(export, 10)
    assert mapped.logs[0].attributes == {"traceId": "not-hex"}
    assert mapped.headers[0] == [("traceparent", b"00-0102030405060708090a0b0c0d0e0f10-0102030405060708-00")]


@pytest.mark.parametrize("body", [b"[]", b"{", b'{"resourceLogs": [{"scopeLogs": "x"}]}', b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"spanId": "0g"}]}]}]}'])
def test_malformed_json_exports_are_refused(body: bytes) -> None:
    with pytest.raises(otlp.InvalidExport):
        otlp.decode(body, otlp.JSON, ExportLogsServiceRequest())


def test_too_many_records_are_refused_before_mapping() -> None:
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "m"}}] * 3}]}]}).encode()
    export = otlp.decode(body, otlp.JSON, ExportLogsServiceRequest())
    assert len(otlp.log_events(export, 3).logs) == 3
    with pytest.raises(otlp.TooManyRecords):
        otlp.log_events(export, 2)


def test_metric_points_labels_and_rejections() -> None:
    def gauge(name: str, *points: dict[str, object], unit: str = "") -> dict[str, object]:
        return {"name": name, "unit": unit, "gauge": {"dataPoints": list(points)}}

    body = json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                    "scopeMetrics": [
                        {
                            "metrics": [
                                gauge(
                                    "ok",
                                    {"asInt": "5", "attributes": [
                                        {"key": "flag", "value": {"boolValue": True}},
                                        {"key": "n", "value": {"intValue": 3}},
                                        {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
                                    ]},
                                ),
                                gauge("no-value", {"timeUnixNano": "1"}),
                                gauge("nan", {"asDouble": "NaN"}),
                                gauge("long-unit", {"asDouble": 1}, unit="u" * 33),
                                {"name": "summary", "summary": {"dataPoints": [{}, {}]}},
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    mapped = otlp.metric_events(otlp.decode(body, otlp.JSON, ExportMetricsServiceRequest()), 100)
    [sample] = mapped.samples
    assert (sample.host, sample.metric, sample.value, sample.labels) == ("svc", "ok", 5.0, {"flag": "true", "n": "3", "list": '["a"]'})
    assert mapped.rejected.count == 5
    assert "summary points are not supported" in mapped.rejected.message


def form(record: logging.LogRecord) -> bytes:
    """What logging.handlers.HTTPHandler sends for a record."""
    return urllib.parse.urlencode(record.__dict__).encode()


def record(msg: str, args: tuple[object, ...] | None, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("billing", level, "/srv/app.py", 12, msg, args, None, func="charge")


def test_the_http_handler_form_maps_onto_a_log_event() -> None:
    event = decode_python_log(form(record("user %s paid %.2f", ("u1", 9.5), logging.WARNING)))
    assert (event.source, event.level, event.message) == ("billing", "WARN", "user u1 paid 9.50")
    assert event.attributes is not None and event.attributes["lineno"] == 12 and event.attributes["funcName"] == "charge"
    assert event.timestamp is not None
    assert decode_python_log(form(record("%(user)s left", ({"user": "u2"},)))).message == "u2 left"
    assert decode_python_log(form(record("100%", None))).message == "100%"
    assert decode_python_log(form(record("bad %d", ("x",)))).message == "bad %d"
    for wide in ("%999999999d", "%(n)12345d", "%.99999f", "%*d", "%-+0.*f"):
        assert decode_python_log(form(record(wide, (1,)))).message == wide, "not formatted: it could take gigabytes"
    assert decode_python_log(form(record("%5.2f|%-3d|", (1.0, 2)))).message == " 1.00|2  |"
    assert decode_python_log(form(record("m", None, 5))).level == "TRACE"
    assert decode_python_log(form(record("m", None, logging.CRITICAL + 10))).level == "FATAL"


def test_numbers_int_cannot_read_stay_text() -> None:
    fields = {"name": "svc", "msg": "m", "lineno": "²", "process": "٣"}  # a superscript digit; an Arabic-Indic three
    event = decode_python_log(urllib.parse.urlencode(fields).encode())
    assert event.attributes == {"lineno": "²", "process": 3}


def test_a_form_without_a_logger_name_is_invalid() -> None:
    with pytest.raises(events.InvalidEvents):
        decode_python_log(b"msg=hello")
