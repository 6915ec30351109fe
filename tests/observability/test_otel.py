"""OpenTelemetry spans exported over OTLP/HTTP, checked against what reached Kafka and the response.

An OTLP/HTTP receiver runs in the test (hypercorn on 127.0.0.1) and keeps every span it is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import confluent_kafka
import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported without __all__
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from app.config import load_settings
from app.observability import otel
from app.observability.tracing import request_context
from app.runtime import Runtime, run
from tests.conftest import ROOT, Infra, wait_ready
from tests.kafka_reader import ConsumedRecord

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@dataclass
class Exported:
    span: Span
    service: str

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    def attributes(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for attribute in self.span.attributes:
            kind = attribute.value.WhichOneof("value")
            values[attribute.key] = getattr(attribute.value, kind) if kind else None
        return values


class Receiver:
    """A minimal OTLP/HTTP traces endpoint: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.paths: list[str] = []

    async def __call__(self, scope: Mapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.paths.append(scope["path"])
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            service = next(
                a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(Exported(span, service) for span in scope_spans.spans)
        answer = b""  # an empty ExportTraceServiceResponse: every span accepted
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body", "body": answer})

    async def wait_for(self, predicate: Callable[[list[Exported]], bool], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not predicate(self.spans):
                await trio.sleep(0.05)

    def named(self, name: str) -> list[Exported]:
        return [s for s in self.spans if s.span.name == name]


def receiver_config() -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    return config


def create_topic(bootstrap_servers: str, topic: str) -> None:
    """The topic before the gateway makes it: the broker's append time as record timestamps, small records only."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    config = {"message.timestamp.type": "LogAppendTime", "max.message.bytes": "2000"}
    spec = NewTopic(topic, 3, config=config)
    admin.create_topics([spec])[topic].result(timeout=30)


def read_one(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> confluent_kafka.Message:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                return msg
        raise TimeoutError(f"nothing in {topic} within {timeout}s")
    finally:
        consumer.close()


async def test_request_enqueue_and_deliver_spans_match_the_kafka_record_and_the_response(
    gateway_env: dict[str, str], infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the SDK's export interval, in ms
    receiver = Receiver()
    async with trio.open_nursery() as outer:
        [url] = await outer.start(partial(hypercorn.trio.serve, receiver, receiver_config()))
        settings = load_settings(
            {
                **gateway_env,
                "ROLES": "application,transaction",
                "OTEL_EXPORTER_OTLP_ENDPOINT": url,
                "OTEL_SERVICE_NAME": "gateway-under-test",
            }
        )
        topic = settings.application.topic
        await trio.to_thread.run_sync(create_topic, infra.kafka_bootstrap_servers, topic)
        async with trio.open_nursery() as nursery:
            runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
            for listener in runtime.addresses:
                await wait_ready(runtime.url(listener))
            async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
                logs = {"logs": [{"source": "billing", "level": "info", "message": f"m{i}"} for i in range(3)]}
                response = await client.post(
                    "/api/v1/logs/batch", json=logs, headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-42"}
                )
                assert response.status_code == 202, response.text
                unnamed = await client.post("/api/v1/logs", json={"source": "a", "level": "info", "message": "x"})
                assert unnamed.status_code == 202
            async with httpx.AsyncClient(base_url=runtime.url("transaction"), timeout=30) as client:
                payment = {"userId": "user-1", "type": "PAYMENT", "amount": 1.5, "currency": "USD"}
                paid = await client.post("/api/v1/transactions", json=payment)
                assert paid.status_code == 202, paid.text
            message = await trio.to_thread.run_sync(read_one, infra.kafka_bootstrap_servers, topic)
            await receiver.wait_for(lambda spans: len([s for s in spans if s.span.name == "deliver"]) == 2)
            async with httpx.AsyncClient(base_url=runtime.url("application")) as client:
                too_large = {"source": "big", "level": "info", "message": os.urandom(3000).hex()}  # beyond 2000 bytes even compressed
                refused = await client.post("/api/v1/logs", json=too_large)
                assert refused.status_code == 202
            await receiver.wait_for(lambda spans: len([s for s in spans if s.span.name == "deliver"]) == 3)
            await receiver.wait_for(lambda spans: any(s.span.name == "outbox commit" for s in spans))
            runtime.shutdown()
        outer.cancel_scope.cancel()

    assert set(receiver.paths) == {"/v1/traces"}
    headers = ConsumedRecord.of(message).headers
    span_id = response.headers["traceparent"].split("-")[2]
    assert response.headers["traceparent"] == f"00-{CALLER_TRACE}-{span_id}-01"

    [request_span] = [s for s in receiver.named("POST /api/v1/logs/batch")]
    assert request_span.service == "gateway-under-test"
    assert request_span.span.trace_id.hex() == CALLER_TRACE
    assert request_span.span.parent_span_id.hex() == CALLER_SPAN
    assert request_span.span_id == span_id
    assert request_span.span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert request_span.attributes() == {
        "http.request.method": "POST",
        "http.route": "/api/v1/logs/batch",
        "http.response.status_code": 202,
        "service": "application",
        "events": 3,
    }

    # The record read back may be any of the three: each names the request span as its parent.
    assert headers["traceparent"].decode() == response.headers["traceparent"]
    assert headers["x-request-id"] == b"req-42"
    assert response.headers["X-Request-ID"] == "req-42"
    generated = unnamed.headers["X-Request-ID"]
    assert str(uuid.UUID(generated)) == generated

    children = [s for s in receiver.spans if s.span.parent_span_id.hex() == span_id]
    assert sorted(s.span.name for s in children) == ["deliver", "enqueue"]
    [enqueue] = [s for s in children if s.span.name == "enqueue"]
    [deliver] = [s for s in children if s.span.name == "deliver"]
    assert {s.span.trace_id.hex() for s in children} == {CALLER_TRACE}
    size = sum(len(json.dumps(log)) for log in logs["logs"])  # a lower bound: the records carry more
    enqueue_attributes = enqueue.attributes()
    assert enqueue_attributes.pop("bytes") > size
    assert enqueue_attributes == {"events": 3, "service": "application", "outcome": "accepted"}
    assert deliver.attributes() == {
        "events": 3,
        "bytes": enqueue.attributes()["bytes"],
        "service": "application",
        "messaging.destination.name": topic,
        "delivered": 3,
        "failed": 0,
        "dead_lettered": 0,
        "lost": 0,
    }
    assert deliver.span.status.code == deliver.span.status.STATUS_CODE_UNSET
    assert deliver.span.start_time_unix_nano == enqueue.span.start_time_unix_nano
    # Ended on Kafka's acknowledgement: after the broker appended the record (its LogAppendTime, in ms).
    timestamp_type, appended_ms = message.timestamp()
    assert timestamp_type == confluent_kafka.TIMESTAMP_LOG_APPEND_TIME
    assert deliver.span.end_time_unix_nano >= appended_ms * 1_000_000
    assert deliver.span.end_time_unix_nano > enqueue.span.end_time_unix_nano

    # A request without a traceparent starts a trace: its span is a root with the response's ids.
    [single] = [s for s in receiver.named("POST /api/v1/logs") if s.span.trace_id.hex() == unnamed.headers["traceparent"][3:35]]
    assert single.span.parent_span_id == b""
    assert unnamed.headers["traceparent"] == f"00-{single.span.trace_id.hex()}-{single.span_id}-01"

    # Refused by the topic (too large), taken by the dead-letter topic: the deliver span says so.
    refused_span_id = refused.headers["traceparent"].split("-")[2]
    [refused_deliver] = [s for s in receiver.named("deliver") if s.span.parent_span_id.hex() == refused_span_id]
    assert {k: v for k, v in refused_deliver.attributes().items() if k in {"delivered", "failed", "dead_lettered", "lost"}} == {
        "delivered": 0, "failed": 1, "dead_lettered": 1, "lost": 0,
    }
    assert refused_deliver.span.status.code == refused_deliver.span.status.STATUS_CODE_ERROR

    [transaction] = receiver.named("POST /api/v1/transactions")
    [commit] = receiver.named("outbox commit")
    assert transaction.attributes()["http.response.status_code"] == 202
    assert paid.headers["traceparent"].split("-")[2] == transaction.span_id
    assert commit.span.parent_span_id.hex() == transaction.span_id
    assert commit.attributes() == {"events": 1}


def test_without_an_endpoint_no_opentelemetry_sdk_module_is_loaded() -> None:
    """Serve a traced request with tracing off, then on, in a fresh interpreter: only "on" loads the SDK."""
    script = textwrap.dedent(
        """
        import sys
        import httpx
        import trio
        import app.__main__
        from app.config import load_settings
        from app.observability.metrics import Metrics
        from app.runtime import build_listeners, build_profiles, build_tracing

        def loaded():
            return sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.trace")))

        async def post(endpoint):
            settings = load_settings({"ROLES": "application", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
            metrics = Metrics()
            tracer = build_tracing(settings)
            listeners = build_listeners(settings, metrics, build_profiles(settings, metrics), None, {}, None, tracer)
            transport = httpx.ASGITransport(app=listeners["application"].pipeline)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                response = await client.post(
                    "/api/v1/logs",
                    json={"source": "a", "level": "info", "message": "m"},
                    headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                )
            assert response.status_code == 202, response.status_code
            tracer.shutdown()

        trio.run(post, "")
        print(len(loaded()), loaded())
        trio.run(post, "http://127.0.0.1:9")
        print(len(loaded()) > 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["0 []", "True"]


def test_ending_spans_never_waits_for_an_exporter_that_cannot_keep_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    tracing = otel.Tracing(load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}))
    started = time.monotonic()
    for _ in range(500):
        tracing.start_request("POST /x", "/x", "application", request_context(None, None, None)).end(202)
    assert time.monotonic() - started < 5.0, "ending spans never waits for the exporter"
    tracing.shutdown()
    # 490 spans dropped: the SDK writes at most a line per window about it, never one per span.
    assert len([r for r in caplog.records if r.getMessage().startswith("Queue full")]) < 10
