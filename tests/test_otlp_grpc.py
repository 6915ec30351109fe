"""OTLP over gRPC: the OpenTelemetry SDK's gRPC exporters against the gateway, plain and over mutual TLS,
proven by reading Kafka back; and each refusal as the gRPC status the OTLP specification names.

The SDK's exporters and grpcio's client are blocking: they run in worker threads.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from app.config import Settings, load_settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader
from tests.pki import Pki, make_pki
from tests.processes import GatewayProcess, free_port

pytestmark = pytest.mark.integration

SDK_HANDLER_DEPRECATED = "ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated:DeprecationWarning"
EXPORT_LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@asynccontextmanager
async def serving(env: dict[str, str], ready: str = "gateway") -> AsyncIterator[Runtime]:
    settings = load_settings({**env, "OTLP_GRPC_PORT": str(free_port())})
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        if not settings.tls_on(ready):
            await wait_ready(runtime.url(ready))
        yield runtime
        runtime.shutdown()


def target(runtime: Runtime) -> str:
    return runtime.url("otlp-grpc").split("://", 1)[1]


def export_logs(*bodies: str | None, service: str = "svc") -> ExportLogsServiceRequest:
    records = []
    for body in bodies:
        record = LogRecord(severity_number=SeverityNumber.SEVERITY_NUMBER_INFO, time_unix_nano=1_764_064_800_000_000_000)
        if body is not None:
            record.body.string_value = body
        records.append(record)
    resource = ProtoResource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])])


def ship_logs(exporter: OTLPLogExporter, service: str, *batches: list[str]) -> None:
    """The SDK's way: a logging.Logger whose handler batches records to the exporter, one export per batch."""
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = logging.getLogger(f"tests.otlp_grpc.{service}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger.addHandler(handler)
    try:
        for messages in batches:
            for message in messages:
                logger.warning(message)
            assert provider.force_flush(20_000)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def ship_metrics(exporter: OTLPMetricExporter, host: str) -> None:
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"host.name": host}), metric_readers=[reader])
    meter = provider.get_meter("tests.otlp_grpc")
    meter.create_counter("requests", unit="1").add(3, {"route": "/pay"})
    meter.create_gauge("queue.depth", unit="{item}").set(7.5, {"queue": "q1"})
    # One export, at shutdown: a flush before it would send the same cumulative points twice, as the SDK means to.
    provider.shutdown()


@pytest.mark.filterwarnings(SDK_HANDLER_DEPRECATED)
async def test_the_sdk_grpc_exporters_ship_logs_and_metrics(gateway_env: dict[str, str], kafka: KafkaReader) -> None:
    service, host = f"grpc-{uuid.uuid4().hex[:8]}", f"host-{uuid.uuid4().hex[:8]}"
    async with serving(gateway_env) as runtime:
        assert runtime.url("otlp-grpc").startswith("http://")
        endpoint = runtime.url("otlp-grpc")
        messages = [f"m{n}" for n in range(7)]
        await trio.to_thread.run_sync(ship_logs, OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=10), service, messages)
        gzipped = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=10, compression=grpc.Compression.Gzip)
        await trio.to_thread.run_sync(ship_metrics, gzipped, host)
        application, infrastructure = runtime.profiles["application"].topic, runtime.profiles["infrastructure"].topic
    with trio.fail_after(5):  # the server's threads end with the gateway
        while any(thread.name.startswith("otlp-grpc") for thread in threading.enumerate()):
            await trio.sleep(0.05)
    logs = await kafka.read(application, count=7, settle=1.0)
    assert sorted(json.loads(r.value)["message"] for r in logs) == messages, "each record once"
    assert {json.loads(r.value)["source"] for r in logs} == {service}
    points = await kafka.read(infrastructure, count=2, settle=1.0)
    samples = {json.loads(r.value)["metric"]: json.loads(r.value) for r in points}
    assert set(samples) == {"requests", "queue.depth"} and len(points) == 2
    assert (samples["requests"]["host"], samples["requests"]["value"], samples["requests"]["labels"]["route"]) == (host, 3.0, "/pay")
    assert samples["queue.depth"]["value"] == 7.5


@pytest.mark.filterwarnings(SDK_HANDLER_DEPRECATED)
async def test_the_sdk_grpc_exporters_over_mutual_tls_with_the_certificate_as_the_key(
    gateway_env: dict[str, str], pki: Pki, kafka: KafkaReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = pki.client("collector")
    env = {**gateway_env, **pki.env(mutual=True), "API_KEYS": "collector::0:CN=collector,other:other-secret"}
    service, host = f"mtls-{uuid.uuid4().hex[:8]}", f"host-{uuid.uuid4().hex[:8]}"
    async with serving(env) as runtime:
        assert runtime.url("otlp-grpc").startswith("https://")
        # As docs/security.md's "Mutual TLS and identities" configures an exporter (the key and certificate in one file here).
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", runtime.url("otlp-grpc"))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca_file))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(collector))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(collector))
        await trio.to_thread.run_sync(ship_logs, OTLPLogExporter(timeout=10), service, ["over mTLS"])
        await trio.to_thread.run_sync(ship_metrics, OTLPMetricExporter(timeout=10), host)

        def call_without_a_certificate() -> grpc.StatusCode:
            with grpc.secure_channel(target(runtime), grpc.ssl_channel_credentials(pki.ca_file.read_bytes())) as channel:
                stub = LogsServiceStub(channel)  # type: ignore[no-untyped-call]  # protoc's gRPC module is untyped
                try:
                    stub.Export(export_logs("no certificate"), timeout=5)
                except grpc.RpcError as error:
                    return error.code()
            return grpc.StatusCode.OK

        assert await trio.to_thread.run_sync(call_without_a_certificate) == grpc.StatusCode.UNAVAILABLE
        application, infrastructure = runtime.profiles["application"].topic, runtime.profiles["infrastructure"].topic
    [record] = await kafka.read(application, count=1, settle=1.0)
    assert (json.loads(record.value)["source"], json.loads(record.value)["message"]) == (service, "over mTLS")
    assert len(await kafka.read(infrastructure, count=2, settle=1.0)) == 2


async def test_a_reload_changes_the_client_ca_grpc_trusts_and_keeps_open_connections(
    gateway_env: dict[str, str], pki: Pki, kafka: KafkaReader
) -> None:
    """TLS_CLIENT_CA_FILE swapped for another CA and reloaded (what SIGHUP does): the new CA's clients
    get in, the old CA's are refused on new connections, and a channel connected before goes on."""
    old, new = pki.client("collector"), pki.client("collector", ca=pki.other_ca)
    # The application listener plain, so the gateway's readiness can be waited for without a certificate.
    env = {**gateway_env, **pki.env(mutual=True), "TLS_LISTENERS": "gateway,otlp-grpc", "TLS_RELOAD_INTERVAL": "0"}
    service = f"reload-{uuid.uuid4().hex[:8]}"

    def channel(certificate: Path) -> grpc.Channel:
        pem = certificate.read_bytes()  # the key and its certificate in one file
        credentials = grpc.ssl_channel_credentials(pki.ca_file.read_bytes(), pem, pem)
        return grpc.secure_channel(target(runtime), credentials, options=[("grpc.use_local_subchannel_pool", 1)])

    def export(open_channel: grpc.Channel, message: str) -> grpc.StatusCode:
        stub = LogsServiceStub(open_channel)  # type: ignore[no-untyped-call]  # protoc's gRPC module is untyped
        try:
            stub.Export(export_logs(message, service=service), timeout=5)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def export_once(certificate: Path, message: str) -> grpc.StatusCode:
        with channel(certificate) as fresh:
            return export(fresh, message)

    async with serving(env, ready="application") as runtime:
        assert runtime.tls is not None and runtime.url("otlp-grpc").startswith("https://")
        held = channel(old)
        try:
            assert await trio.to_thread.run_sync(export, held, "old CA, held channel, before") == grpc.StatusCode.OK
            assert await trio.to_thread.run_sync(export_once, new, "new CA, before") == grpc.StatusCode.UNAVAILABLE

            fresh_bundle = pki.client_ca_file.with_suffix(".new")
            pki.other_ca.cert_pem.write_to_path(str(fresh_bundle))
            fresh_bundle.replace(pki.client_ca_file)
            assert runtime.tls.reload()

            assert await trio.to_thread.run_sync(export_once, new, "new CA, after") == grpc.StatusCode.OK
            assert await trio.to_thread.run_sync(export_once, old, "old CA, after") == grpc.StatusCode.UNAVAILABLE
            assert await trio.to_thread.run_sync(export, held, "old CA, held channel, after") == grpc.StatusCode.OK
        finally:
            held.close()
        topic = runtime.profiles["application"].topic
    records = [json.loads(record.value) for record in await kafka.read(topic, count=3, settle=1.0)]
    messages = sorted(record["message"] for record in records if record["source"] == service)
    assert messages == ["new CA, after", "old CA, held channel, after", "old CA, held channel, before"]


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, float | None]:
    """A refused call's code, message and the retry delay its status details carry."""
    trailing = dict(error.trailing_metadata())
    delay = None
    if "grpc-status-details-bin" in trailing:
        status = Status.FromString(trailing["grpc-status-details-bin"])
        assert status.code == error.code().value[0]
        for detail in status.details:
            info = RetryInfo()
            assert detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            assert RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"]) == info
    return error.code(), error.details(), delay


def calls(address: str, requests: Sequence[tuple[bytes, Sequence[tuple[str, str]], grpc.Compression]]) -> list[Any]:
    """Each raw export (bytes, metadata, compression): its ExportLogsServiceResponse or its refusal."""
    answers: list[Any] = []
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        export = channel.unary_unary(EXPORT_LOGS)
        for body, metadata, compression in requests:
            try:
                answers.append(ExportLogsServiceResponse.FromString(export(body, metadata=metadata, timeout=10, compression=compression)))
            except grpc.RpcError as error:
                answers.append(refusal(error))
    return answers


async def test_each_refusal_is_the_grpc_status_otlp_names(gateway_env: dict[str, str], kafka: KafkaReader) -> None:
    env = {
        **gateway_env, "API_KEYS": "team:team-secret", "MAX_BATCH_EVENTS": "5", "APPLICATION_BUFFER_EVENTS": "4",
        "MAX_REQUEST_BYTES": str(1024 * 1024), "MAX_EVENT_BYTES": str(64 * 1024), "RETRY_AFTER_SECONDS": "2",
    }
    key = [("authorization", "Bearer team-secret")]
    none = grpc.Compression.NoCompression
    async with serving(env) as runtime:
        answers = await trio.to_thread.run_sync(
            calls,
            target(runtime),
            [
                (export_logs("kept", None).SerializeToString(), key, grpc.Compression.Gzip),
                (export_logs("no key").SerializeToString(), [], none),
                (export_logs("wrong key").SerializeToString(), [("authorization", "Bearer nope")], none),
                (b"\xff\xff\xff", key, none),
                (export_logs(*["six"] * 6).SerializeToString(), key, none),
                (export_logs(*["five"] * 5).SerializeToString(), key, none),  # more than the buffer holds
                (b"\x00" * (2 * 1024 * 1024), key, none),
                (export_logs("x" * (8 * 1024 * 1024)).SerializeToString(), key, grpc.Compression.Gzip),  # a gzip bomb
            ],
        )
        assert await trio.to_thread.run_sync(calls, target(runtime), [(export_logs("after").SerializeToString(), key, none)]) == [
            ExportLogsServiceResponse()
        ]
        topic = runtime.profiles["application"].topic
    partial_success, no_key, wrong_key, malformed, too_many, full, too_large, bomb = answers
    assert partial_success.partial_success.rejected_log_records == 1
    assert partial_success.partial_success.error_message == "a log record without a body"
    assert no_key[:1] == wrong_key[:1] == (grpc.StatusCode.UNAUTHENTICATED,)
    assert malformed[0] == grpc.StatusCode.INVALID_ARGUMENT and "malformed export request" in malformed[1]
    assert too_many[0] == grpc.StatusCode.INVALID_ARGUMENT and "at most 5 records" in too_many[1]
    assert full == (grpc.StatusCode.UNAVAILABLE, "buffer full: the application buffer is full; retry later", 2.0)
    assert too_large[0] == bomb[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpcio's own bound, gzip or not
    records = await kafka.read(topic, count=2, settle=1.0)
    assert sorted(json.loads(r.value)["message"] for r in records) == ["after", "kept"]


@pytest.mark.filterwarnings(SDK_HANDLER_DEPRECATED)
async def test_the_sdk_exporter_waits_out_a_rate_limit_and_ships_each_record_once(
    gateway_env: dict[str, str], kafka: KafkaReader
) -> None:
    # 5 tokens, 2 a second: the second batch of 4 waits (RESOURCE_EXHAUSTED with a retry delay), then goes.
    env = {**gateway_env, "APPLICATION_RATE_LIMIT": "2", "MAX_BATCH_EVENTS": "5"}
    service = f"limited-{uuid.uuid4().hex[:8]}"
    async with serving(env) as runtime:
        raw = await trio.to_thread.run_sync(
            calls, target(runtime), [(export_logs(*["a"] * 4).SerializeToString(), [], grpc.Compression.NoCompression)] * 2
        )
        assert raw[0] == ExportLogsServiceResponse()
        code, message, delay = raw[1]
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in message and delay is not None and delay >= 1
        await trio.sleep(3)  # the bucket refills

        exporter = OTLPLogExporter(endpoint=runtime.url("otlp-grpc"), insecure=True, timeout=15)
        batches = [[f"b{batch}-{n}" for n in range(4)] for batch in range(2)]
        with trio.fail_after(30):
            await trio.to_thread.run_sync(ship_logs, exporter, service, *batches)
        throttled = runtime.metrics.registry.get_sample_value("producer_throttled_total", {"service": "application"})
        assert throttled == 8, "the raw call's 4, and the exporter's second batch once before its retry went through"
        topic = runtime.profiles["application"].topic
    records = await kafka.read(topic, count=12, settle=1.0)
    mine = sorted(json.loads(r.value)["message"] for r in records if r.key == service.encode())
    assert mine == sorted(f"b{batch}-{n}" for batch in range(2) for n in range(4)), "retried, and each record once"
    assert len(records) == 12


async def test_a_gateway_without_its_shippers_forwards_grpc_exports(
    settings: Settings, gateway_env: dict[str, str], kafka: KafkaReader
) -> None:
    shipper = GatewayProcess({**gateway_env, "LOG_LEVEL": "WARNING"}, args=["--role", "application,infrastructure"])
    try:
        await shipper.start("application")
        env = {
            **gateway_env, "ROLES": "gateway", "APPLICATION_URLS": shipper.url("application"),
            "INFRASTRUCTURE_URLS": shipper.url("infrastructure"), "TRANSACTION_URLS": shipper.url("transaction"),
            "API_KEYS": "",
        }
        async with serving(env) as runtime:
            answers = await trio.to_thread.run_sync(
                calls, target(runtime),
                [
                    (export_logs("forwarded", None, service="remote").SerializeToString(), [], grpc.Compression.NoCompression),
                    (b"\xff\xff", [], grpc.Compression.NoCompression),
                ],
            )
        assert await shipper.stop() == 0
    finally:
        await shipper.close()
    assert answers[0].partial_success.rejected_log_records == 1
    assert answers[1][0] == grpc.StatusCode.INVALID_ARGUMENT
    [record] = await kafka.read(settings.application.topic, count=1, settle=1.0)
    assert (json.loads(record.value)["source"], json.loads(record.value)["message"]) == ("remote", "forwarded")
