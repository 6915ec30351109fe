"""OTLP/HTTP and Python's HTTPHandler: real clients against the gateway, proven by reading Kafka back.

The OpenTelemetry SDK's exporters are blocking (requests): they run in worker threads.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import json
import logging
import logging.handlers
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from app.config import Settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import ConsumedRecord, KafkaReader
from tests.processes import GatewayProcess

pytestmark = pytest.mark.integration

PROTOBUF = "application/x-protobuf"
# The SDK's LoggingHandler is what the OpenTelemetry logging docs still show; its deprecation is not ours.
SDK_HANDLER_DEPRECATED = "ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated:DeprecationWarning"


def values(records: list[ConsumedRecord]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def export_logs(body: str | None = "hello", *, service: str = "svc", trace_id: bytes = b"", span_id: bytes = b"") -> bytes:
    record = LogRecord(
        severity_number=SeverityNumber.SEVERITY_NUMBER_WARN,
        time_unix_nano=1_764_064_800_123_456_789,
        trace_id=trace_id,
        span_id=span_id,
    )
    if body is not None:
        record.body.string_value = body
    resource = ProtoResource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=[record])])])
    return request.SerializeToString()


@pytest.mark.filterwarnings(SDK_HANDLER_DEPRECATED)
@pytest.mark.parametrize("listener", ["application", "gateway"])
async def test_sdk_log_exporter_through_a_logging_logger(gateway: Runtime, kafka: KafkaReader, listener: str) -> None:
    service = unique("checkout")
    provider = LoggerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    # gzip on the gateway listener, plain on the shipper's: both encodings of the exporter.
    compression = Compression.Gzip if listener == "gateway" else Compression.NoCompression
    exporter = OTLPLogExporter(endpoint=f"{gateway.url(listener)}/v1/logs", compression=compression, timeout=10)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = logging.getLogger(f"tests.otlp.{service}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    logger.addHandler(handler)
    tracer = TracerProvider().get_tracer("tests.otlp")

    def log_in_a_span() -> tuple[str, str, str]:
        with tracer.start_as_current_span("charge") as span:
            logger.warning("payment %s declined", "p-17", extra={"order": "o-9", "attempt": 2})
            logger.error("card expired")
            context = span.get_span_context()
        logger.debug("outside any span")
        assert provider.force_flush(10_000)
        return f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{context.trace_flags:02x}"

    try:
        trace_id, span_id, flags = await trio.to_thread.run_sync(log_in_a_span)
    finally:
        logger.removeHandler(handler)
        await trio.to_thread.run_sync(provider.shutdown)

    records = await kafka.read(gateway.profiles["application"].topic, count=3, settle=0.5)
    by_message = {json.loads(r.value)["message"]: r for r in records}
    assert set(by_message) == {"payment p-17 declined", "card expired", "outside any span"}
    warning = json.loads(by_message["payment p-17 declined"].value)
    assert warning["source"] == service and warning["level"] == "WARN"
    assert warning["attributes"]["order"] == "o-9" and warning["attributes"]["attempt"] == 2
    assert warning["attributes"]["resource"]["service.name"] == service
    assert warning["attributes"]["resource"]["deployment.environment"] == "test"
    assert warning["attributes"]["scope"]["name"] == logger.name
    assert warning["traceId"] == trace_id
    assert json.loads(by_message["card expired"].value)["level"] == "ERROR"
    assert json.loads(by_message["outside any span"].value)["level"] == "DEBUG"
    for message in ("payment p-17 declined", "card expired"):
        record = by_message[message]
        assert record.key == service.encode()
        assert record.headers["traceparent"].decode() == f"00-{trace_id}-{span_id}-{flags}"
    untraced = by_message["outside any span"]
    assert "traceId" not in json.loads(untraced.value)
    assert untraced.headers["traceparent"].decode().split("-")[1] != trace_id, "the request's own trace instead"


async def test_sdk_metric_exporter_ships_a_gauge_and_a_counter(gateway: Runtime, kafka: KafkaReader) -> None:
    host = unique("web")
    for listener in ("infrastructure", "gateway"):
        exporter = OTLPMetricExporter(endpoint=f"{gateway.url(listener)}/v1/metrics", timeout=10)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(resource=Resource.create({"host.name": host, "service.name": "api"}), metric_readers=[reader])
        meter = provider.get_meter("tests.otlp")
        meter.create_counter("http.requests", unit="1").add(3, {"route": "/pay", "listener": listener})
        meter.create_gauge("queue.depth", unit="{item}").set(7.5, {"queue": "q1", "listener": listener})
        try:
            assert await trio.to_thread.run_sync(provider.force_flush, 10_000)
        finally:
            await trio.to_thread.run_sync(provider.shutdown)

    records = await kafka.read(gateway.profiles["infrastructure"].topic, count=4, settle=0.5)
    samples = {(v["metric"], v["labels"]["listener"]): v for v in values(records)}
    assert set(samples) == {(m, l) for m in ("http.requests", "queue.depth") for l in ("infrastructure", "gateway")}
    for listener in ("infrastructure", "gateway"):
        counter, gauge = samples["http.requests", listener], samples["queue.depth", listener]
        assert (counter["host"], counter["value"], counter["unit"], counter["labels"]["route"]) == (host, 3.0, "1", "/pay")
        assert (gauge["host"], gauge["value"], gauge["unit"], gauge["labels"]["queue"]) == (host, 7.5, "{item}", "q1")
        assert gauge["timestamp"].startswith("20")
    assert {r.key for r in records} == {host.encode()}


async def test_otlp_json_with_hex_ids_and_a_record_without_body(gateway: Runtime, kafka: KafkaReader) -> None:
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    export = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "my.library", "version": "1.0.0"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1544712660300000000",
                                "observedTimeUnixNano": 1544712660400000000,
                                "severityNumber": 17,
                                "severityText": "Error",
                                "traceId": trace_id,
                                "spanId": span_id,
                                "flags": 1,
                                "body": {"kvlistValue": {"values": [{"key": "code", "value": {"intValue": "42"}}]}},
                                "attributes": [
                                    {"key": "user", "value": {"stringValue": "u1"}},
                                    {"key": "retries", "value": {"intValue": 3}},
                                    {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"boolValue": True}]}}},
                                ],
                                "unknownField": "ignored",
                            },
                            {"severityText": "warning", "attributes": []},
                            {"observedTimeUnixNano": "1544712661000000000", "body": {"stringValue": "plain"}, "severityText": "warning"},
                        ],
                    }
                ],
            }
        ]
    }
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        response = await client.post("/v1/logs", json=export)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"partialSuccess": {"rejectedLogRecords": "1", "errorMessage": "a log record without a body"}}

    records = await kafka.read(gateway.profiles["application"].topic, count=2, settle=0.5)
    by_message = {json.loads(r.value)["message"]: r for r in records}
    assert set(by_message) == {'{"code":42}', "plain"}
    structured = by_message['{"code":42}']
    value = json.loads(structured.value)
    assert (value["source"], value["level"], value["timestamp"], value["traceId"]) == (
        "json-svc", "ERROR", "2018-12-13T14:51:00.300000Z", trace_id,
    )
    assert value["attributes"] == {
        "user": "u1", "retries": 3, "tags": ["a", True],
        "resource": {"service.name": "json-svc"}, "scope": {"name": "my.library", "version": "1.0.0"},
    }
    assert structured.headers["traceparent"] == f"00-{trace_id}-{span_id}-01".encode()
    assert by_message["plain"].headers["traceparent"].decode() == response.headers["traceparent"], "the request's trace"
    plain = json.loads(by_message["plain"].value)
    assert (plain["level"], plain["timestamp"]) == ("WARN", "2018-12-13T14:51:01Z")


async def test_protobuf_answers_partial_success_and_status_errors(gateway: Runtime, kafka: KafkaReader) -> None:
    unsupported = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=ProtoResource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="batch-job"))]),
                scope_metrics=[
                    ScopeMetrics(
                        metrics=[
                            Metric(name="latency", histogram=Histogram(data_points=[HistogramDataPoint(count=1)] * 2)),
                            Metric(name="temperature", unit="Cel", gauge=Gauge(data_points=[NumberDataPoint(as_int=21, time_unix_nano=1)])),
                        ]
                    )
                ],
            )
        ]
    )
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        partial_logs = await client.post(
            "/v1/logs",
            content=gzip.compress(export_logs(None) + export_logs("kept")),  # two ResourceLogs, concatenated
            headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
        )
        malformed = await client.post("/v1/logs", content=b"\xff\xff\xff", headers={"Content-Type": PROTOBUF})
        bad_json = await client.post("/v1/logs", content=b'{"resourceLogs": 5}', headers={"Content-Type": "application/json"})
        bad_hex = await client.post("/v1/logs", json={"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]})
        text = await client.post("/v1/logs", content=b"x", headers={"Content-Type": "text/plain"})
        brotli = await client.post("/v1/logs", content=export_logs(), headers={"Content-Type": PROTOBUF, "Content-Encoding": "br"})
    async with httpx.AsyncClient(base_url=gateway.url("infrastructure")) as client:
        partial_metrics = await client.post("/v1/metrics", content=unsupported.SerializeToString(), headers={"Content-Type": PROTOBUF})

    assert partial_logs.status_code == 200 and partial_logs.headers["content-type"] == PROTOBUF
    answer = ExportLogsServiceResponse.FromString(partial_logs.content)
    assert answer.partial_success.rejected_log_records == 1
    assert answer.partial_success.error_message == "a log record without a body"
    for response, status, content_type in (
        (malformed, 400, PROTOBUF), (bad_json, 400, "application/json"), (bad_hex, 400, "application/json"),
        (text, 415, "application/json"), (brotli, 415, PROTOBUF),
    ):
        assert (response.status_code, response.headers["content-type"]) == (status, content_type), response.text
    assert Status.FromString(malformed.content).code == 3  # INVALID_ARGUMENT
    assert "is not hex" in bad_hex.json()["message"]
    assert "Content-Type" in text.json()["message"]
    assert partial_metrics.status_code == 200
    metrics_answer = ExportMetricsServiceResponse.FromString(partial_metrics.content)
    assert metrics_answer.partial_success.rejected_data_points == 2
    assert "histogram points are not supported" in metrics_answer.partial_success.error_message

    logs = await kafka.read(gateway.profiles["application"].topic, count=1, settle=1.0)
    assert [v["message"] for v in values(logs)] == ["kept"]
    [sample] = values(await kafka.read(gateway.profiles["infrastructure"].topic, count=1, settle=1.0))
    assert (sample["host"], sample["metric"], sample["value"], sample["unit"]) == ("batch-job", "temperature", 21.0, "Cel")


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Runtime]:
    """A gateway holding 5 application tokens, refilled one every 2 s, 5 to a batch: the second batch
    of 4 would need 6 s of refill, far more than the test takes."""
    limits = dataclasses.replace(
        settings,
        application=dataclasses.replace(settings.application, rate_limit=0.5),
        max_batch_events=5,
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, limits, handle_signals=False))
        await wait_ready(runtime.url("application"))
        yield runtime
        runtime.shutdown()


async def test_throttling_and_limits_answer_a_status_with_retry_after(limited: Runtime) -> None:
    four = ExportLogsServiceRequest.FromString(b"".join(export_logs(f"m{n}") for n in range(4))).SerializeToString()
    six = four + export_logs() + export_logs()
    async with httpx.AsyncClient(base_url=limited.url("application")) as client:
        first = await client.post("/v1/logs", content=four, headers={"Content-Type": PROTOBUF})
        throttled = await client.post("/v1/logs", content=four, headers={"Content-Type": PROTOBUF})
        too_many = await client.post("/v1/logs", content=six, headers={"Content-Type": PROTOBUF})
    assert first.status_code == 200 and first.content == b""
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert Status.FromString(throttled.content).code == 8  # RESOURCE_EXHAUSTED
    assert "rate limit" in Status.FromString(throttled.content).message
    assert too_many.status_code == 413
    assert "at most 5 records" in Status.FromString(too_many.content).message


class ClosingHTTPHandler(logging.handlers.HTTPHandler):
    """The standard handler, unchanged on the wire; it leaves the connection it opens per record
    to the garbage collector (a ResourceWarning here), so this closes them at the end."""

    def __init__(self, host: str, url: str) -> None:
        super().__init__(host, url, method="POST")
        self.connections: list[http.client.HTTPConnection] = []

    def getConnection(self, host: str, secure: bool) -> http.client.HTTPConnection:
        connection = super().getConnection(host, secure)
        self.connections.append(connection)
        return connection

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        super().close()


async def test_python_http_handler_posts_reach_kafka(gateway: Runtime, kafka: KafkaReader) -> None:
    name = unique("billing.worker")
    host = gateway.url("application").removeprefix("http://")
    handler = ClosingHTTPHandler(host, "/api/v1/logs/python")
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)

    def log() -> None:
        logger.warning("disk %s at %d%%", "/var", 93)
        logger.critical("no args")
        logger.info("an object %s", object())  # its args are no Python literal: msg is kept as it is

    try:
        await trio.to_thread.run_sync(log)
    finally:
        logger.removeHandler(handler)
        handler.close()

    records = await kafka.read(gateway.profiles["application"].topic, count=3, settle=0.5)
    by_message = {v["message"]: v for v in values(records)}
    assert set(by_message) == {"disk /var at 93%", "no args", "an object %s"}
    disk = by_message["disk /var at 93%"]
    assert (disk["source"], disk["level"]) == (name, "WARN")
    assert disk["attributes"]["funcName"] == "log" and isinstance(disk["attributes"]["lineno"], int)
    assert disk["attributes"]["module"] == "test_otlp" and disk["timestamp"] != disk["receivedAt"]
    assert (by_message["no args"]["level"], by_message["an object %s"]["level"]) == ("FATAL", "INFO")
    assert {r.key for r in records} == {name.encode()}

    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        json_body = await client.post("/api/v1/logs/python", json={"name": "x", "msg": "y"})
        no_name = await client.post("/api/v1/logs/python", data={"msg": "m", "levelname": "INFO"})
    assert json_body.status_code == 415
    assert no_name.status_code == 422 and "source" in no_name.text


async def test_the_remote_gateway_forwards_otlp(settings: Settings, gateway_env: dict[str, str], kafka: KafkaReader) -> None:
    shipper = GatewayProcess({**gateway_env, "LOG_LEVEL": "WARNING"}, args=["--role", "application,infrastructure"])
    try:
        await shipper.start("application")
        gateway_only = dataclasses.replace(
            settings,
            roles="gateway",
            application_urls=shipper.url("application"),
            infrastructure_urls=shipper.url("infrastructure"),
            transaction_urls=shipper.url("transaction"),  # not served: that shipper is not needed here
        )
        async with trio.open_nursery() as nursery:
            runtime: Runtime = await nursery.start(partial(run, gateway_only, handle_signals=False))
            await wait_ready(runtime.url("gateway"))
            async with httpx.AsyncClient(base_url=runtime.url("gateway")) as client:
                logs = await client.post("/v1/logs", content=export_logs("forwarded", service="remote"), headers={"Content-Type": PROTOBUF})
                metrics = await client.post("/v1/metrics", json={"resourceMetrics": []})
                python = await client.post("/api/v1/logs/python", data={"name": "remote-py", "msg": "via form", "levelno": "20"})
                document = (await client.get("/openapi.json")).json()
            runtime.shutdown()
        assert await shipper.stop() == 0, "a graceful stop flushes what was accepted"
    finally:
        await shipper.close()
    assert (logs.status_code, logs.headers["content-type"], logs.content) == (200, PROTOBUF, b"")
    assert (metrics.status_code, metrics.json()) == (200, {})
    assert python.status_code == 202
    assert {"/v1/logs", "/v1/metrics", "/api/v1/logs/python"} <= set(document["paths"])
    records = await kafka.read(settings.application.topic, count=2, settle=0.5)
    assert sorted((v["source"], v["message"]) for v in values(records)) == [("remote", "forwarded"), ("remote-py", "via form")]
