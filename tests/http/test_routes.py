"""Every route of every listener's table, with tracing off and on: each answers in its dialect and
lands exactly its events in Kafka, read back.

The routes come from the route tables (:func:`app.runtime.listener_routes`): a route added without
a sample here fails the first test. With tracing on, an OTLP/HTTP receiver in the test keeps the
spans, and every request must have its SERVER span, named for its route.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import httpx
import hypercorn.trio
import pytest
import trio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from app.config import load_settings
from app.runtime import LISTENERS, Runtime, listener_routes, run
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader
from tests.observability.test_otel import Receiver, receiver_config

pytestmark = pytest.mark.integration

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Sample:
    """A valid request of one route, how it is answered, and the events it holds."""

    content_type: str
    body: bytes
    status: int
    events: int


def _resource(host: str) -> Resource:
    return Resource(
        attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value=host)),
            KeyValue(key="host.name", value=AnyValue(string_value=host)),
        ]
    )


def _otlp_logs(marker: str) -> bytes:
    records = [LogRecord(severity_number=9, time_unix_nano=1_764_064_800_000_000_000 + i) for i in range(2)]
    for index, record in enumerate(records):
        record.body.string_value = f"{marker} {index}"
    request = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=_resource(marker), scope_logs=[ScopeLogs(log_records=records)])]
    )
    return bytes(request.SerializeToString())


def _otlp_metrics(marker: str) -> bytes:
    points = [NumberDataPoint(as_double=float(i), time_unix_nano=1_764_064_800_000_000_000 + i) for i in range(2)]
    metric = Metric(name=f"{marker}.gauge", unit="1", gauge=Gauge(data_points=points))
    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=_resource(marker), scope_metrics=[ScopeMetrics(metrics=[metric])])]
    )
    return bytes(request.SerializeToString())


def _log(marker: str, index: int = 0) -> dict[str, object]:
    return {"source": marker, "level": "info", "message": f"{marker} {index}"}


def _metric(marker: str, index: int = 0) -> dict[str, object]:
    return {"host": marker, "metric": "cpu", "value": index, "unit": "%"}


def _transaction(marker: str, index: int = 0) -> dict[str, object]:
    return {"userId": marker, "type": "PAYMENT", "amount": f"{index + 1}.50", "currency": "EUR"}


def samples(marker: str) -> dict[tuple[str, str], Sample]:
    """One sample per ingest route, its events tagged with ``marker`` (as source, host or user)."""

    def encoded(document: object) -> bytes:
        return json.dumps(document).encode()

    form = urllib.parse.urlencode({"name": marker, "msg": "%s paid", "args": "('u1',)", "levelno": "20", "created": "1764064800.5"})
    return {
        ("POST", "/api/v1/logs"): Sample(JSON, encoded(_log(marker)), 202, 1),
        ("POST", "/api/v1/logs/batch"): Sample(JSON, encoded({"logs": [_log(marker, i) for i in range(3)]}), 202, 3),
        ("POST", "/v1/logs"): Sample(PROTOBUF, _otlp_logs(marker), 200, 2),
        ("POST", "/api/v1/logs/python"): Sample(FORM, form.encode(), 202, 1),
        ("POST", "/api/v1/metrics"): Sample(JSON, encoded(_metric(marker)), 202, 1),
        ("POST", "/api/v1/metrics/batch"): Sample(JSON, encoded({"metrics": [_metric(marker, i) for i in range(3)]}), 202, 3),
        ("POST", "/v1/metrics"): Sample(PROTOBUF, _otlp_metrics(marker), 200, 2),
        ("POST", "/api/v1/transactions"): Sample(JSON, encoded(_transaction(marker)), 202, 1),
        ("POST", "/api/v1/transactions/batch"): Sample(
            JSON, encoded({"transactions": [_transaction(marker, i) for i in range(2)]}), 202, 2
        ),
    }


def test_every_ingest_route_of_every_table_has_a_sample() -> None:
    routes = {(route.method, route.path) for listener in LISTENERS for route in listener_routes(listener) if route.dialect}
    assert routes == set(samples("x"))


@pytest.fixture(params=[False, True], ids=["tracing-off", "tracing-on"])
async def traced(
    request: pytest.FixtureRequest, gateway_env: dict[str, str]
) -> AsyncIterator[tuple[Runtime, Receiver | None]]:
    async with trio.open_nursery() as nursery:
        receiver: Receiver | None = None
        env = dict(gateway_env)
        if request.param:
            receiver = Receiver()
            [url] = await nursery.start(partial(hypercorn.trio.serve, receiver, receiver_config()))  # type: ignore[arg-type]
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        yield runtime, receiver
        runtime.shutdown()
        nursery.cancel_scope.deadline = trio.current_time() + 30  # the receiver runs until cancelled


def _topic(runtime: Runtime, stream: str) -> str:
    return getattr(runtime.settings, stream).topic  # type: ignore[no-any-return]


async def test_every_route_answers_in_its_dialect_and_lands_exactly_its_events(
    traced: tuple[Runtime, Receiver | None], kafka: KafkaReader
) -> None:
    runtime, receiver = traced
    expected: dict[str, dict[str, int]] = {}  # topic -> marker -> events
    requests = 0
    transaction_ids: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for listener in LISTENERS:
            for route in listener_routes(listener):
                if route.dialect is None:
                    continue
                marker = f"{listener}-{route.path.strip('/').replace('/', '-')}"
                sample = samples(marker)[(route.method, route.path)]
                answer = await client.post(
                    runtime.url(listener) + route.path, content=sample.body, headers={"Content-Type": sample.content_type}
                )
                requests += 1
                assert answer.status_code == sample.status, (listener, route.path, answer.text)
                assert answer.headers["traceparent"].startswith("00-") and answer.headers["x-request-id"]
                if sample.status == 202:
                    payload = answer.json()
                    ids = payload["eventIds"] if "eventIds" in payload else [payload["eventId"]]
                    assert len(ids) == sample.events
                    if route.stream == "transaction":
                        transaction_ids += ids
                topic = _topic(runtime, route.stream)
                expected.setdefault(topic, {})[marker] = sample.events
        status = await client.get(f"{runtime.url('transaction')}/api/v1/transactions/{transaction_ids[0]}")
        assert status.status_code == 200 and status.json()["eventId"] == transaction_ids[0]
    for topic, markers in expected.items():
        records = await kafka.read(topic, count=sum(markers.values()), settle=1.0, timeout=60)
        keys: dict[str, int] = {}
        for record in records:
            keys[record.key.decode()] = keys.get(record.key.decode(), 0) + 1
        assert keys == markers, topic
    if receiver is not None:
        await receiver.wait_for(lambda spans: len([s for s in spans if s.span.kind == 2]) >= requests + 1)
        routes = sorted(s.attributes()["http.route"] for s in receiver.spans if s.span.kind == 2)
        assert routes == sorted(
            [route.path for listener in LISTENERS for route in listener_routes(listener) if route.dialect]
            + ["/api/v1/transactions/{eventId}"]
        )
