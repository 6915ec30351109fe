"""Hostile input on every route: random bodies, headers, encodings, bombs and slow clients.

Every answer is 202 or a refusal with a JSON error, the process never crashes, its memory
stays bounded, and what reaches Kafka (and the outbox) is exactly what was accepted.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import psycopg
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from app.runtime import listener_routes
from tests.conftest import Infra
from tests.kafka_reader import KafkaReader
from tests.processes import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.fault]

# Every ingest route of the gateway's table (which holds every shipper's).
ROUTES = [route.path for route in listener_routes("gateway") if route.dialect is not None]
OTLP_ROUTES = {route.path for route in listener_routes("gateway") if route.dialect is not None and route.dialect.name == "otlp"}
REFUSALS = {400, 401, 404, 405, 409, 413, 415, 422, 429, 503}
RSS_LIMIT = 512 * 1024 * 1024


@dataclass
class Target:
    urls: list[str]
    pid: int
    env: dict[str, str]
    accepted_logs: set[str] = field(default_factory=set)
    accepted_metrics: set[str] = field(default_factory=set)
    accepted_transactions: set[str] = field(default_factory=set)
    # OTLP answers count what they took, without ids.
    otlp_logs: int = 0
    otlp_metrics: int = 0


@pytest.fixture(scope="module")
def target(infra: Infra) -> Iterator[Target]:
    limits = {"MAX_REQUEST_BYTES": str(1024 * 1024), "MAX_DECOMPRESSED_BYTES": str(4 * 1024 * 1024), "MAX_EVENT_BYTES": str(256 * 1024)}
    # No host collector: the infrastructure topic then holds exactly what the routes accepted.
    with running_gateway(infra, COLLECTOR_INTERVAL="0", **limits) as gateway:
        listeners = ("gateway", "application", "infrastructure", "transaction")
        yield Target([gateway.urls[name] for name in listeners], gateway.pid, gateway.env)


def nested(depth: int) -> bytes:
    return b'{"source":"a","level":"INFO","message":"m","attributes":{"x":' + b"[" * depth + b"]" * depth + b"}}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
log_like = st.fixed_dictionaries(
    {"source": st.text(max_size=10), "level": st.sampled_from(["INFO", "warn", "LOUD", ""]), "message": st.text(max_size=30)},
    optional={"timestamp": st.text(max_size=25), "attributes": json_values, "traceId": st.text(max_size=10), "extra": json_values},
)
transaction_like = st.fixed_dictionaries(
    {
        "userId": st.text(max_size=10),
        "type": st.sampled_from(["PAYMENT", "refund", "GIFT"]),
        "amount": st.one_of(st.decimals(allow_nan=True, places=3).map(str), st.integers(), st.floats(), st.text(max_size=8)),
        "currency": st.sampled_from(["USD", "JPY", "BHD", "ZZZ", "usd", ""]),
    },
    optional={"metadata": json_values, "occurredAt": st.text(max_size=25)},
)
valid_log = st.fixed_dictionaries(
    {
        "source": st.text(min_size=1, max_size=10),
        "level": st.sampled_from(["INFO", "warn", "Error"]),
        "message": st.text(min_size=1, max_size=30),
    },
    optional={"attributes": st.dictionaries(st.text(max_size=5), json_values, max_size=3)},
)
valid_transaction = st.fixed_dictionaries(
    {
        "userId": st.text(min_size=1, max_size=10),
        "type": st.sampled_from(["PAYMENT", "deposit"]),
        "amount": st.integers(1, 10**9),
        "currency": st.sampled_from(["EUR", "JPY"]),
    }
)
metric_like = st.fixed_dictionaries(
    {"host": st.text(max_size=10), "metric": st.text(max_size=10), "value": st.one_of(st.floats(), st.integers(), st.text(max_size=5))},
    optional={"unit": st.text(max_size=40), "labels": json_values, "timestamp": st.text(max_size=25), "extra": json_values},
)
valid_metric = st.fixed_dictionaries(
    {
        "host": st.text(min_size=1, max_size=10),
        "metric": st.text(min_size=1, max_size=10),
        "value": st.floats(allow_nan=False, allow_infinity=False),
    },
    optional={"labels": st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3)},
)
# OTLP/HTTP JSON exports: records with and without a body, points with and without a value.
otlp_logs = st.lists(st.one_of(st.just({}), st.text(max_size=20).map(lambda t: {"body": {"stringValue": t}}), json_values), max_size=4).map(
    lambda records: {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}
)
otlp_metrics = st.lists(st.one_of(st.just({}), st.floats().map(lambda v: {"asDouble": v}), json_values), max_size=4).map(
    lambda points: {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "m", "gauge": {"dataPoints": points}}]}]}]}
)
python_form = st.dictionaries(
    st.sampled_from(["name", "msg", "args", "levelno", "levelname", "created", "lineno"]), st.text(max_size=30), max_size=7
).map(lambda fields: urllib.parse.urlencode(fields).encode())
bodies = st.one_of(
    valid_metric.map(lambda v: json.dumps(v).encode()),
    st.lists(valid_metric, min_size=1, max_size=5).map(lambda v: json.dumps({"metrics": v}).encode()),
    st.lists(metric_like, max_size=5).map(lambda v: json.dumps({"metrics": v}).encode()),
    otlp_logs.map(lambda v: json.dumps(v).encode()),
    otlp_metrics.map(lambda v: json.dumps(v).encode()),
    python_form,
    valid_log.map(lambda v: json.dumps(v).encode()),
    st.lists(valid_log, min_size=1, max_size=5).map(lambda v: json.dumps({"logs": v}).encode()),
    valid_transaction.map(lambda v: json.dumps(v).encode()),
    st.lists(valid_transaction, min_size=1, max_size=5).map(lambda v: json.dumps({"transactions": v}).encode()),
    st.binary(max_size=300),  # includes invalid UTF-8
    json_values.map(lambda v: json.dumps(v).encode()),
    log_like.map(lambda v: json.dumps(v).encode()),
    st.lists(log_like, max_size=5).map(lambda v: json.dumps({"logs": v}).encode()),
    st.lists(log_like, max_size=5).map(lambda v: "\n".join(json.dumps(x) for x in v).encode()),
    transaction_like.map(lambda v: json.dumps(v).encode()),
    st.lists(transaction_like, max_size=5).map(lambda v: json.dumps({"transactions": v}).encode()),
    st.sampled_from([nested(5_000), b'"' + b"x" * 2_000_000 + b'"', b"[" * 100_000]),
)
content_types = st.sampled_from([
    "application/json", "application/json", "application/json", "application/x-ndjson", "text/plain", "",
    "application/json; charset=latin-1", "\x00", "application/x-protobuf", "application/x-www-form-urlencoded",
])
encodings = st.sampled_from(["", "", "", "gzip", "gzip", "gzip-bomb", "gzip-broken", "br", "identity"])
extra_headers = st.dictionaries(
    st.sampled_from(["traceparent", "tracestate", "Idempotency-Key", "X-Request-ID", "Authorization"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
    max_size=3,
)


def encode(body: bytes, encoding: str) -> tuple[bytes, dict[str, str]]:
    if encoding == "gzip":
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    if encoding == "gzip-bomb":
        return gzip.compress(b"[" + b" " * 20_000_000 + b"]"), {"Content-Encoding": "gzip"}
    if encoding == "gzip-broken":
        return gzip.compress(body)[:-5], {"Content-Encoding": "gzip"}
    return body, ({"Content-Encoding": encoding} if encoding else {})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    url_index=st.integers(0, 3),
    route=st.sampled_from(ROUTES),
    body=bodies,
    content_type=content_types,
    encoding=encodings,
    headers=extra_headers,
)
def test_every_answer_is_honest(
    target: Target, url_index: int, route: str, body: bytes, content_type: str, encoding: str, headers: dict[str, str]
) -> None:
    payload, encoding_headers = encode(body, encoding)
    request_headers = {**headers, **encoding_headers}
    if content_type:
        request_headers["Content-Type"] = content_type
    try:
        response = httpx.post(f"{target.urls[url_index]}{route}", content=payload, headers=request_headers, timeout=30)
    except httpx.LocalProtocolError:
        return  # the client itself refused to send such headers
    if route in OTLP_ROUTES and response.status_code not in (404, 405):
        otlp_answer(target, route, payload, request_headers, response)
    else:
        assert response.status_code == 202 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
        answer = response.json()
        if response.status_code != 202:
            assert isinstance(answer["error"], str) and answer["error"]
            return
        ids = answer.get("eventIds") or [answer["eventId"]]
        accepted = target.accepted_logs if "/logs" in route else target.accepted_metrics if "/metrics" in route else target.accepted_transactions
        accepted.update(ids)
    assert psutil.Process(target.pid).memory_info().rss < RSS_LIMIT


def otlp_answer(target: Target, route: str, payload: bytes, headers: dict[str, str], response: httpx.Response) -> None:
    """OTLP/HTTP answers in its own terms: 200 with an export response, or a google.rpc.Status,
    each in the request's encoding (JSON unless it was protobuf)."""
    protobuf = headers.get("Content-Type") == "application/x-protobuf"
    assert response.status_code == 200 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/x-protobuf" if protobuf else "application/json")
    if response.status_code != 200:
        status = Status.FromString(response.content) if protobuf else json_format.Parse(response.content, Status())
        assert status.code != 0 and status.message
        return
    # Taken: every record (or point) of the request but those the answer counts as rejected.
    signal = "logs" if route == "/v1/logs" else "metrics"
    request_type = ExportLogsServiceRequest if signal == "logs" else ExportMetricsServiceRequest
    response_type = ExportLogsServiceResponse if signal == "logs" else ExportMetricsServiceResponse
    data = gzip.decompress(payload) if headers.get("Content-Encoding") == "gzip" else payload
    if protobuf:
        request, answer = request_type.FromString(data), response_type.FromString(response.content)
    else:
        request = json_format.Parse(data, request_type(), ignore_unknown_fields=True)
        answer = json_format.Parse(response.content or b"{}", response_type())
    if signal == "logs":
        sent = sum(len(scope.log_records) for resource in request.resource_logs for scope in resource.scope_logs)
        target.otlp_logs += sent - answer.partial_success.rejected_log_records
    else:
        sent = sum(
            len(getattr(metric, metric.WhichOneof("data")).data_points)
            for resource in request.resource_metrics for scope in resource.scope_metrics for metric in scope.metrics
            if metric.WhichOneof("data")
        )
        target.otlp_metrics += sent - answer.partial_success.rejected_data_points


BAD = "@@"  # stands for the two bytes \xff\xfe, which are no UTF-8, once the body is encoded


def with_bad_text(document: object) -> Iterator[object]:
    """``document`` once per string in it (each value and each key), that string replaced by BAD."""
    if isinstance(document, str):
        yield BAD
    elif isinstance(document, list):
        for index, item in enumerate(document):
            for bad in with_bad_text(item):
                yield [*document[:index], bad, *document[index + 1 :]]
    elif isinstance(document, dict):
        for key, value in document.items():
            yield {(BAD if k == key else k): v for k, v in document.items()}
            for bad in with_bad_text(value):
                yield {**document, key: bad}


def invalid_utf8_requests() -> Iterator[tuple[str, str, bytes]]:
    """(route, content type, body) with invalid UTF-8 in one field at a time, for every ingest route."""
    log = {"source": "s", "level": "INFO", "message": "m", "attributes": {"k": "v"}, "traceId": "t"}
    metric = {"host": "h", "metric": "m", "value": 1, "unit": "%", "labels": {"k": "v"}}
    transaction = {"userId": "u", "type": "PAYMENT", "amount": "1.50", "currency": "EUR", "description": "d", "metadata": {"k": "v"}}
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]}
    documents: dict[str, object] = {
        "/api/v1/logs": log,
        "/api/v1/logs/batch": {"logs": [log]},
        "/api/v1/metrics": metric,
        "/api/v1/metrics/batch": {"metrics": [metric]},
        "/api/v1/transactions": transaction,
        "/api/v1/transactions/batch": {"transactions": [transaction]},
        "/v1/logs": {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [{"body": {"stringValue": "m"}, "severityText": "INFO"}]}]}]},
        "/v1/metrics": {"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"metrics": [{"name": "m", "unit": "1", "gauge": {"dataPoints": [{"asDouble": 1}]}}]}]}]},
    }
    assert set(documents) | {"/api/v1/logs/python"} == set(ROUTES), "a route without its invalid UTF-8 cases"
    for route, document in documents.items():
        for bad in with_bad_text(document):
            body = json.dumps(bad).encode().replace(BAD.encode(), b"\xff\xfe")
            yield route, "application/json", body
            if route in OTLP_ROUTES:
                # Protobuf has no keys to spoil: only the string values whose field exists.
                message = ExportLogsServiceRequest() if route == "/v1/logs" else ExportMetricsServiceRequest()
                encoded = json_format.ParseDict(bad, message, ignore_unknown_fields=True).SerializeToString()
                if BAD.encode() in encoded:
                    # The two bytes of BAD become the two invalid ones: the lengths in the protobuf stay right.
                    yield route, "application/x-protobuf", encoded.replace(BAD.encode(), b"\xff\xfe")
    form = {"name": "n", "msg": "m %s", "args": "('a',)", "levelname": "INFO", "pathname": "p", "funcName": "f"}
    for field in form:
        encoded = urllib.parse.urlencode({**form, field: BAD})  # BAD as %40%40
        yield "/api/v1/logs/python", "application/x-www-form-urlencoded", encoded.replace("%40%40", "%FF%FE").encode()
        yield "/api/v1/logs/python", "application/x-www-form-urlencoded", encoded.encode().replace(b"%40%40", b"\xff\xfe")


def test_invalid_utf8_in_any_field_of_any_route_is_a_400_in_its_dialect(target: Target) -> None:
    cases = 0
    with httpx.Client(timeout=30) as client:
        for route, content_type, body in invalid_utf8_requests():
            for url in (target.urls[0], target.urls[{"/api/v1/l": 1, "/v1/logs": 1, "/api/v1/m": 2, "/v1/metri": 2}.get(route[:9], 3)]):
                response = client.post(url + route, content=body, headers={"Content-Type": content_type})
                cases += 1
                assert response.status_code == 400, (url, route, body[:200], response.status_code, response.text[:300])
                if route in OTLP_ROUTES and content_type == "application/x-protobuf":
                    assert Status.FromString(response.content).code == 3  # INVALID_ARGUMENT
                elif route in OTLP_ROUTES:
                    assert json_format.Parse(response.content, Status()).code == 3
                else:
                    assert response.json()["error"].startswith("malformed")
    assert cases > 100


def test_slow_clients_do_not_hold_up_the_others(target: Target) -> None:
    host, port = target.urls[1].removeprefix("http://").split(":")
    stalled = []
    for _ in range(50):  # each promises a body it never finishes sending
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /api/v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        stalled.append(sock)
    try:
        started = time.monotonic()
        response = httpx.post(f"{target.urls[1]}/api/v1/logs", json={"source": "s", "level": "INFO", "message": "fast"})
        elapsed = time.monotonic() - started
        assert response.status_code == 202
        target.accepted_logs.add(response.json()["eventId"])  # before the timing check: the module's last test counts it
        assert elapsed < 1.0, "the stalled connections held up nobody"
    finally:
        for sock in stalled:
            sock.close()


def test_exactly_what_was_accepted_reached_kafka_and_the_outbox(target: Target, infra: Infra) -> None:
    """Runs after the others in this module: nothing from a refused request was written."""
    # Known-good traffic beside the random one, so the comparison below always has substance.
    for i in range(20):
        response = httpx.post(f"{target.urls[0]}/api/v1/logs", json={"source": "ok", "level": "INFO", "message": str(i)})
        target.accepted_logs.add(response.json()["eventId"])
    for i in range(5):
        response = httpx.post(
            f"{target.urls[3]}/api/v1/transactions",
            json={"userId": "ok", "type": "DEPOSIT", "amount": i + 1, "currency": "EUR"},
        )
        target.accepted_transactions.add(response.json()["eventId"])
    for i in range(5):
        response = httpx.post(f"{target.urls[2]}/api/v1/metrics", json={"host": "ok", "metric": "m", "value": i})
        target.accepted_metrics.add(response.json()["eventId"])
    reader = KafkaReader(infra.kafka_bootstrap_servers)
    for topic, accepted, otlp in (
        (target.env["APPLICATION_TOPIC"], target.accepted_logs, target.otlp_logs),
        (target.env["INFRASTRUCTURE_TOPIC"], target.accepted_metrics, target.otlp_metrics),
    ):
        records = reader.read_sync(
            topic,
            until=lambda rs: len(rs) >= len(accepted) + otlp and accepted <= {r.headers["event-id"].decode() for r in rs},
            timeout=60,
            settle=2.0,
        )
        ids = [r.headers["event-id"].decode() for r in records]
        assert len(ids) == len(set(ids)), f"{topic}: an event twice"
        # Every event answered with an id, and as many others as the OTLP answers said they took.
        assert accepted <= set(ids) and len(ids) == len(accepted) + otlp, (topic, len(ids), len(accepted), otlp)
    with psycopg.connect(target.env["DATABASE_URL"]) as conn:
        stored = {str(row[0]) for row in conn.execute("SELECT event_id FROM outbox")}
    assert stored == target.accepted_transactions
    assert psutil.Process(target.pid).memory_info().rss < RSS_LIMIT
