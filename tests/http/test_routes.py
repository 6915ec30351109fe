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

import cramjam
import httpx
import hypercorn.trio
import pytest
import trio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from app.config import load_settings
from app.proto.prometheus.remote_pb2 import WriteRequest
from app.proto.prometheus.types_pb2 import Label, Sample as RemoteWriteSample, TimeSeries
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
    query: str = ""  # the request's query string, "?..." (HEC's raw metadata)


def _resource(host: str) -> Resource:
    return Resource(
        attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value=host)),
            KeyValue(key="host.name", value=AnyValue(string_value=host)),
        ]
    )


def _otlp_logs(marker: str) -> bytes:
    records = [
        LogRecord(severity_number=SeverityNumber.SEVERITY_NUMBER_INFO, time_unix_nano=1_764_064_800_000_000_000 + i)
        for i in range(2)
    ]
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
        **_elasticsearch_samples(marker),
        **_hec_samples(marker),
        ("POST", "/loki/api/v1/push"): Sample(JSON, encoded({"streams": [_loki_stream(marker)]}), 204, 2),
        ("POST", "/api/v1/write"): Sample(PROTOBUF, _remote_write(marker), 204, 2),
        ("POST", "/collectd"): Sample(JSON, encoded([_collectd_load(marker)]), 200, 3),
    }


def _remote_write(marker: str) -> bytes:
    """A snappy-compressed remote_write 1.0 request, as Prometheus sends it: two samples of one series."""
    series = TimeSeries(
        labels=[Label(name="__name__", value="up"), Label(name="instance", value=marker), Label(name="job", value="node")],
        samples=[RemoteWriteSample(value=1.0, timestamp=1_764_064_800_000 + i) for i in range(2)],
    )
    return bytes(cramjam.snappy.compress_raw(WriteRequest(timeseries=[series]).SerializeToString()))


def _collectd_load(marker: str) -> dict[str, object]:
    """A value list as collectd's write_http JSON format writes it: three values of the load plugin."""
    return {
        "values": [0.5, 0.25, 0.125], "dstypes": ["gauge"] * 3, "dsnames": ["shortterm", "midterm", "longterm"],
        "time": 1764064800.25, "interval": 10.0, "host": marker, "plugin": "load", "plugin_instance": "",
        "type": "load", "type_instance": "",
    }


def _loki_stream(marker: str) -> dict[str, object]:
    values = [["1764064800000000001", f"{marker} 0"], ["1764064800000000002", f"{marker} 1", {"k": "v"}]]
    return {"stream": {"service_name": marker}, "values": values}


def _hec_samples(marker: str) -> dict[tuple[str, str], Sample]:
    """Splunk HEC: events (the marker as their source), raw lines (the source in the query string),
    the ack query of a channel and the health check, which take none."""
    events = b"".join(json.dumps({"event": f"{marker} {i}", "source": marker, "time": 1764064800.5}).encode() for i in range(2))
    lines = "".join(f"{marker} {i}\n" for i in range(3)).encode()
    query = "?" + urllib.parse.urlencode({"source": marker, "channel": marker})
    hec = "/services/collector"
    samples = {("POST", path): Sample(JSON, events, 200, 2) for path in (hec, f"{hec}/event", f"{hec}/event/1.0")}
    samples.update({("POST", path): Sample("text/plain", lines, 200, 3, query) for path in (f"{hec}/raw", f"{hec}/raw/1.0")})
    samples[("POST", f"{hec}/ack")] = Sample(JSON, b'{"acks": [0]}', 200, 0, query)
    samples.update({("GET", path): Sample("", b"", 200, 0) for path in (f"{hec}/health", f"{hec}/health/1.0")})
    return samples


def _elasticsearch_samples(marker: str) -> dict[tuple[str, str], Sample]:
    """_bulk with two events (the marker as their host), and the handshake routes, which take none."""
    bulk = b"".join(
        json.dumps(line).encode() + b"\n"
        for i in range(2)
        for line in ({"index": {"_index": "logs"}}, {"message": f"{marker} {i}", "host": marker})
    )
    samples = {
        (method, path): Sample("application/x-ndjson", bulk, 200, 2)
        for method in ("POST", "PUT")
        for path in ("/_bulk", "/{index}/_bulk")
    }
    templates = [(method, path) for method in ("HEAD", "GET", "PUT") for path in ("/_template/{name}", "/_index_template/{name}")]
    handshake = [
        ("GET", "/"), ("HEAD", "/"), ("GET", "/_license"), ("GET", "/_cluster/health"), ("GET", "/_cat/health"),
        ("GET", "/_nodes/http"), *templates,
    ]
    samples.update({route: Sample(JSON, b"{}" if route[0] == "PUT" else b"", 200, 0) for route in handshake})
    return samples


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
            [url] = await nursery.start(partial(hypercorn.trio.serve, receiver, receiver_config()))
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        yield runtime, receiver
        runtime.shutdown()
        nursery.cancel_scope.deadline = trio.current_time() + 30  # the receiver runs until cancelled


def _topic(runtime: Runtime, stream: str) -> str:
    topic = getattr(runtime.settings, stream).topic
    assert isinstance(topic, str), stream
    return topic


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
                if route.method != "POST":  # a path served by two methods: a marker each
                    marker += f"-{route.method.lower()}"
                sample = samples(marker)[(route.method, route.path)]
                answer = await client.request(
                    route.method, runtime.url(listener) + route.path + sample.query, content=sample.body,
                    headers={"Content-Type": sample.content_type},
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
                elif route.path.endswith("/_bulk"):
                    assert [item["index"]["status"] for item in answer.json()["items"]] == [201] * sample.events
                if sample.events:
                    expected.setdefault(_topic(runtime, route.stream), {})[marker] = sample.events
        status = await client.get(f"{runtime.url('transaction')}/api/v1/transactions/{transaction_ids[0]}")
        assert status.status_code == 200 and status.json()["eventId"] == transaction_ids[0]
    for topic, markers in expected.items():
        records = await kafka.read(topic, count=sum(markers.values()), settle=1.0, timeout=60)
        keys: dict[str, int] = {}
        for record in records:
            assert record.key is not None, record
            keys[record.key.decode()] = keys.get(record.key.decode(), 0) + 1
        assert keys == markers, topic
    if receiver is not None:
        await receiver.wait_for(lambda spans: len([s for s in spans if s.span.kind == 2]) >= requests + 1)
        routes = sorted(s.attributes()["http.route"] for s in receiver.spans if s.span.kind == 2)
        assert routes == sorted(
            [route.path for listener in LISTENERS for route in listener_routes(listener) if route.dialect]
            + ["/api/v1/transactions/{eventId}"]
        )
