"""Hostile input on every route: random bodies, headers, encodings, bombs and slow clients.

Every answer is 202 or a refusal with a JSON error, the process never crashes, its memory
stays bounded, and what reaches Kafka (and the outbox) is exactly what was accepted.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import cramjam
import httpx
import psutil
import psycopg
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from app.proto.loki.push_pb2 import PushRequest
from app.proto.prometheus.remote_pb2 import WriteRequest
from app.proto.prometheus.types_pb2 import Label, Sample, TimeSeries
from app.runtime import listener_routes
from tests.conftest import Infra
from tests.kafka_reader import KafkaReader
from tests.pki import make_pki
from tests.processes import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.fault]

# Every ingest route of the gateway's table (which holds every shipper's) that takes a body by POST,
# as the tests below send it (Elasticsearch's PUT /_bulk is its POST's twin; its handshake takes none).
ROUTES = [route.path for route in listener_routes("gateway") if route.dialect is not None and route.method == "POST"]
ELASTIC_ROUTES = {
    route.path for route in listener_routes("gateway")
    if route.method == "POST" and route.dialect is not None and route.dialect.name == "elasticsearch"
}
OTLP_ROUTES = {route.path for route in listener_routes("gateway") if route.dialect is not None and route.dialect.name == "otlp"}
HEC_ROUTES = {path for path in ROUTES if path.startswith("/services/collector")}
LOKI_ROUTES = {path for path in ROUTES if path.startswith("/loki/")}
REMOTE_WRITE_ROUTES = {
    route.path for route in listener_routes("gateway") if route.dialect is not None and route.dialect.name == "remote_write"
}
COLLECTD_ROUTES = {route.path for route in listener_routes("gateway") if route.dialect is not None and route.dialect.name == "collectd"}
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
    # Nor do HEC's and Loki's: what a body held, counted when the answer said it was all taken.
    hec_logs: int = 0
    loki_logs: int = 0
    # Nor does remote_write's 204: its X-Prometheus-Remote-Write-Samples-Written header counts them.
    remote_write_metrics: int = 0


@pytest.fixture(scope="module")
def target(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    limits = {"MAX_REQUEST_BYTES": str(1024 * 1024), "MAX_DECOMPRESSED_BYTES": str(4 * 1024 * 1024), "MAX_EVENT_BYTES": str(256 * 1024)}
    # The gateway and infrastructure listeners over TLS, the other two plain: every route is tried both ways at
    # no extra cost. httpx trusts the test CA through SSL_CERT_FILE.
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tls = {**pki.env(), "TLS_LISTENERS": "gateway,infrastructure"}
    # No host collector: the infrastructure topic then holds exactly what the routes accepted.
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("SSL_CERT_FILE", str(pki.ca_file))
        with running_gateway(infra, COLLECTOR_INTERVAL="0", **limits, **tls) as gateway:
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
# Elasticsearch _bulk: served and refused actions, documents that map and documents that are no object.
elastic_document = st.fixed_dictionaries(
    {"message": st.text(max_size=20)},
    optional={
        "level": st.sampled_from(["info", "WARN", "loud"]), "host": st.text(max_size=10),
        "@timestamp": st.text(max_size=25), "x": json_values,
    },
)
elastic_action = st.tuples(
    st.sampled_from(["index", "create", "delete", "update"]),
    st.fixed_dictionaries({}, optional={"_index": st.text(max_size=8)}),
    st.one_of(elastic_document, json_values),
)
elastic_bulk = st.lists(elastic_action, max_size=5).map(
    lambda actions: b"".join(
        json.dumps(line).encode() + b"\n"
        for action, meta, document in actions
        for line in ([{action: meta}] if action == "delete" else [{action: meta}, document])
    )
)
# Splunk HEC: event objects one after the other (or lines, for raw); Loki JSON pushes.
hec_event = st.fixed_dictionaries(
    {"event": st.one_of(st.text(max_size=20), json_values)},
    optional={
        "time": st.one_of(st.floats(), st.text(max_size=8)), "host": st.text(max_size=8), "source": st.text(max_size=8),
        "sourcetype": st.text(max_size=8), "index": st.sampled_from(["main", "Main", "_x", ""]), "fields": json_values,
    },
)
hec_events = st.lists(st.tuples(st.one_of(hec_event, json_values), st.sampled_from(["", " ", "\n"])), max_size=5).map(
    lambda items: "".join(json.dumps(item) + separator for item, separator in items).encode()
)
loki_entry = st.one_of(
    st.tuples(st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), st.text(max_size=5)), st.text(max_size=15)).map(list),
    st.tuples(st.integers(0, 2**62).map(str), st.text(max_size=15), st.dictionaries(st.text(max_size=5), st.text(max_size=5))).map(list),
    json_values,
)
loki_push = st.lists(
    st.fixed_dictionaries({
        "stream": st.dictionaries(st.sampled_from(["service_name", "app", "level", "bad-name"]), st.text(max_size=8), max_size=3),
        "values": st.lists(loki_entry, max_size=3),
    }),
    max_size=3,
).map(lambda streams: json.dumps({"streams": streams}).encode())
# Prometheus remote_write (snappy-compressed, as Prometheus sends it, or not) and collectd value lists.
remote_write_series = st.builds(
    lambda labels, samples: TimeSeries(
        labels=[Label(name=k, value=v) for k, v in labels], samples=[Sample(value=v, timestamp=t) for v, t in samples]
    ),
    st.lists(st.tuples(st.sampled_from(["__name__", "instance", "job", "x", ""]), st.text(max_size=8)), max_size=4),
    st.lists(st.tuples(st.floats(), st.integers(0, 2**45)), max_size=3),
)
remote_write = st.lists(remote_write_series, max_size=3).map(lambda series: WriteRequest(timeseries=series).SerializeToString())
collectd_value_list = st.fixed_dictionaries(
    {
        "values": st.lists(
            st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none(), st.integers(0, 2**64)), min_size=1, max_size=2
        ),
        "dstypes": st.lists(st.sampled_from(["gauge", "derive", "counter", "absolute", "x"]), min_size=1, max_size=2),
        "dsnames": st.lists(st.sampled_from(["value", "rx", "tx"]), min_size=1, max_size=2),
        "time": st.one_of(st.floats(0, 4e9), st.floats()),
        "host": st.text(max_size=10),
        "plugin": st.sampled_from(["load", "cpu", ""]),
        "type": st.sampled_from(["load", "if_octets"]),
    },
    optional={
        "interval": st.floats(0, 60), "plugin_instance": st.text(max_size=4), "type_instance": st.text(max_size=4),
        "meta": json_values,
    },
)
# A snappy block stating 20 MB: refused by its header, before it is inflated (remote_write takes a body
# without Content-Encoding as snappy).
SNAPPY_BOMB = bytes(cramjam.snappy.compress_raw(b"\0" * 20_000_000))
bodies = st.one_of(
    remote_write,
    remote_write.map(lambda body: bytes(cramjam.snappy.compress_raw(body))),
    st.lists(collectd_value_list, max_size=4).map(lambda v: json.dumps(v).encode()),
    elastic_bulk,
    hec_events,
    loki_push,
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
    st.sampled_from([nested(5_000), b'"' + b"x" * 2_000_000 + b'"', b"[" * 100_000, SNAPPY_BOMB]),
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
    elif route in ELASTIC_ROUTES and response.status_code not in (404, 405):
        elastic_answer(target, response)
    elif route in HEC_ROUTES and response.status_code not in (404, 405):
        hec_answer(target, route, payload, request_headers, response)
    elif route in LOKI_ROUTES and response.status_code not in (404, 405):
        loki_answer(target, payload, request_headers, response)
    elif route in REMOTE_WRITE_ROUTES and response.status_code not in (404, 405):  # 404: a listener without it
        remote_write_answer(target, response)
    elif route in COLLECTD_ROUTES and response.status_code not in (404, 405):
        collectd_answer(target, response)
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    url_index=st.integers(0, 1),
    route=st.sampled_from(sorted(ELASTIC_ROUTES)),
    body=elastic_bulk,  # the other bodies come to these routes in the test above
    content_type=st.sampled_from(["application/x-ndjson", "application/json; charset=UTF-8", "text/plain"]),
    encoding=encodings,
)
def test_every_elastic_answer_is_honest(
    target: Target, url_index: int, route: str, body: bytes, content_type: str, encoding: str
) -> None:
    """_bulk bodies on the listeners that serve them: the items taken are counted at the end."""
    payload, headers = encode(body, encoding)
    response = httpx.post(f"{target.urls[url_index]}{route}", content=payload, headers={**headers, "Content-Type": content_type}, timeout=30)
    elastic_answer(target, response)


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
    data = gzip.decompress(payload) if headers.get("Content-Encoding") == "gzip" else payload
    answer = response.content if protobuf else response.content or b"{}"
    if route == "/v1/logs":
        logs = otlp_message(ExportLogsServiceRequest, data, protobuf, ignore_unknown_fields=True)
        sent = sum(len(scope.log_records) for resource in logs.resource_logs for scope in resource.scope_logs)
        rejected = otlp_message(ExportLogsServiceResponse, answer, protobuf).partial_success.rejected_log_records
        target.otlp_logs += sent - rejected
    else:
        metrics = otlp_message(ExportMetricsServiceRequest, data, protobuf, ignore_unknown_fields=True)
        sent = sum(
            len(getattr(metric, kind).data_points)
            for resource in metrics.resource_metrics for scope in resource.scope_metrics for metric in scope.metrics
            if (kind := metric.WhichOneof("data")) is not None
        )
        rejected = otlp_message(ExportMetricsServiceResponse, answer, protobuf).partial_success.rejected_data_points
        target.otlp_metrics += sent - rejected


AnyMessage = TypeVar("AnyMessage", bound=Message)


def otlp_message(
    message: type[AnyMessage], content: bytes, protobuf: bool, *, ignore_unknown_fields: bool = False
) -> AnyMessage:
    """``content`` read as ``message``: protobuf, or OTLP's JSON."""
    if protobuf:
        return message.FromString(content)
    return json_format.Parse(content, message(), ignore_unknown_fields=ignore_unknown_fields)


def elastic_answer(target: Target, response: httpx.Response) -> None:
    """Elasticsearch's terms: 200 with an item per action (201 taken, with its event id; else its
    error), or the whole request refused in Elasticsearch's error shape."""
    assert response.status_code == 200 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    assert response.headers["X-Elastic-Product"] == "Elasticsearch"
    answer = response.json()
    if response.status_code != 200:
        assert answer["status"] == response.status_code and answer["error"]["type"] and answer["error"]["reason"]
        return
    outcomes = [outcome for item in answer["items"] for outcome in item.values()]
    for outcome in outcomes:
        if outcome["status"] == 201:
            target.accepted_logs.add(outcome["_id"])  # no _id in these requests: the event's own
        else:
            assert outcome["status"] == 400 and outcome["error"]["type"] and outcome["error"]["reason"]
    assert answer["errors"] == any(outcome["status"] != 201 for outcome in outcomes)


def hec_answer(target: Target, route: str, payload: bytes, headers: dict[str, str], response: httpx.Response) -> None:
    """HEC's terms: 200 ``{"text": "Success", "code": 0}`` when every event of the body was taken (an
    object each, or a non-blank line each for raw: counted here from the body; an ack query takes
    none), or HEC's error ``{"text", "code"}`` with its status."""
    assert response.status_code == 200 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    if response.status_code != 200:
        assert answer["code"] not in (0, 17) and answer["text"]
        return
    if route.endswith("/ack"):
        assert isinstance(answer["acks"], dict)
        return
    assert answer["text"] == "Success" and answer["code"] == 0
    text = (gzip.decompress(payload) if headers.get("Content-Encoding") == "gzip" else payload).decode()
    if "/raw" in route:
        target.hec_logs += len([line for line in re.split(r"[\r\n]+", text) if line.strip()])
        return
    decoder, position = json.JSONDecoder(), 0
    while text[position:].strip():
        position = len(text) - len(text[position:].lstrip())
        position = decoder.raw_decode(text, position)[1]
        target.hec_logs += 1


def loki_answer(target: Target, payload: bytes, headers: dict[str, str], response: httpx.Response) -> None:
    """Loki's terms: 204 without a body when every line of the push was taken (counted here from the
    body, JSON or snappy protobuf), or a plain-text refusal."""
    assert response.status_code == 204 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    if response.status_code != 204:
        assert response.headers["Content-Type"].startswith("text/plain") and response.text.strip()
        return
    assert response.content == b""
    data = gzip.decompress(payload) if headers.get("Content-Encoding") == "gzip" else payload
    if headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/json":
        target.loki_logs += sum(len(stream.get("values", [])) for stream in json.loads(data).get("streams", []))
    else:
        data = data if headers.get("Content-Encoding") == "snappy" else bytes(cramjam.snappy.decompress_raw(data))
        target.loki_logs += sum(len(stream.entries) for stream in PushRequest.FromString(data).streams)


def remote_write_answer(target: Target, response: httpx.Response) -> None:
    """Remote-Write's terms: 204 without a body, the events it took counted in a header, or a one-line
    text refusal (what Prometheus logs)."""
    assert response.status_code == 204 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("text/plain")
    if response.status_code != 204:
        assert response.text.strip()
        return
    assert response.content == b""
    target.remote_write_metrics += int(response.headers["X-Prometheus-Remote-Write-Samples-Written"])


def collectd_answer(target: Target, response: httpx.Response) -> None:
    """write_http's terms: 200 (collectd logs any other status) with the events' ids, or the JSON error."""
    assert response.status_code == 200 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    answer = response.json()
    if response.status_code != 200:
        assert isinstance(answer["error"], str) and answer["error"]
        return
    assert answer["count"] == len(answer["eventIds"]) and answer["skipped"] >= 0
    target.accepted_metrics.update(answer["eventIds"])


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
    hec_event = {"event": "m", "host": "h", "source": "s", "sourcetype": "st", "index": "main", "fields": {"k": "v"}}
    documents.update({route: hec_event for route in HEC_ROUTES if "/raw" not in route and not route.endswith("/ack")})
    documents["/loki/api/v1/push"] = {"streams": [{"stream": {"service_name": "s"}, "values": [["1764064800000000000", "m", {"k": "v"}]]}]}
    documents["/collectd"] = [
        {
            "values": [1, None], "dstypes": ["gauge", "derive"], "dsnames": ["value", "rx"], "time": 1764064800.5, "interval": 1.0,
            "host": "h", "plugin": "p", "plugin_instance": "pi", "type": "t", "type_instance": "ti", "meta": {"k": "v"},
        }
    ]
    raw_and_ack = {route for route in HEC_ROUTES if "/raw" in route or route.endswith("/ack")}
    assert set(documents) | {"/api/v1/logs/python"} | ELASTIC_ROUTES | raw_and_ack | REMOTE_WRITE_ROUTES == set(ROUTES), (
        "a route without its invalid UTF-8 cases"
    )
    for route, document in documents.items():
        for bad in with_bad_text(document):
            body = json.dumps(bad).encode().replace(BAD.encode(), b"\xff\xfe")
            yield route, "application/json", body
            if route in OTLP_ROUTES:
                # Protobuf has no keys to spoil: only the string values whose field exists.
                message = ExportLogsServiceRequest() if route == "/v1/logs" else ExportMetricsServiceRequest()
                assert isinstance(bad, dict), bad
                encoded = json_format.ParseDict(bad, message, ignore_unknown_fields=True).SerializeToString()
                if BAD.encode() in encoded:
                    # The two bytes of BAD become the two invalid ones: the lengths in the protobuf stay right.
                    yield route, "application/x-protobuf", encoded.replace(BAD.encode(), b"\xff\xfe")
    bulk = [{"index": {"_index": "i", "_id": "x"}}, {"message": "m", "level": "INFO", "host": {"name": "h"}, "k": "v"}]
    for route in sorted(raw_and_ack):
        if route.endswith("/ack"):
            yield route + "?channel=c", "application/json", b'{"acks": [0], "@@": 1}'.replace(BAD.encode(), b"\xff\xfe")
            yield route + "?channel=%FF%FE", "application/json", b'{"acks": [0]}'
        else:
            yield route, "text/plain", b"first line\nsecond @@ line\n".replace(BAD.encode(), b"\xff\xfe")
            yield route + "?source=%FF%FE", "text/plain", b"a line"
    for selector, text, metadata in [('{service_name="@@"}', "m", ("k", "v")), ('{app="a"}', "m @@", ("k", "v")),
                                     ('{app="a"}', "m", ("@@", "v")), ('{app="a"}', "m", ("k", "@@"))]:
        push = PushRequest()
        entry = push.streams.add(labels=selector).entries.add(line=text)
        entry.structuredMetadata.add(name=metadata[0], value=metadata[1])
        encoded = push.SerializeToString().replace(BAD.encode(), b"\xff\xfe")
        yield "/loki/api/v1/push", "application/x-protobuf", bytes(cramjam.snappy.compress_raw(encoded))
    # remote_write: every label name and value, the only text a WriteRequest holds that becomes an event.
    labels = [("__name__", "up"), ("instance", "i"), ("job", "j")]
    for position in range(len(labels) * 2):
        spoiled = [list(label) for label in labels]
        spoiled[position // 2][position % 2] = BAD
        series = TimeSeries(labels=[Label(name=k, value=v) for k, v in spoiled], samples=[Sample(value=1.0, timestamp=1)])
        encoded = WriteRequest(timeseries=[series]).SerializeToString().replace(BAD.encode(), b"\xff\xfe")
        for route in sorted(REMOTE_WRITE_ROUTES):
            yield route, "application/x-protobuf", bytes(cramjam.snappy.compress_raw(encoded))
    for route in sorted(ELASTIC_ROUTES):
        for position, line in enumerate(bulk):
            for bad in with_bad_text(line):
                lines = [*bulk[:position], bad, *bulk[position + 1 :]]
                body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
                yield route, "application/x-ndjson", body.replace(BAD.encode(), b"\xff\xfe")
    form = {"name": "n", "msg": "m %s", "args": "('a',)", "levelname": "INFO", "pathname": "p", "funcName": "f"}
    for field in form:
        query = urllib.parse.urlencode({**form, field: BAD})  # BAD as %40%40
        yield "/api/v1/logs/python", "application/x-www-form-urlencoded", query.replace("%40%40", "%FF%FE").encode()
        yield "/api/v1/logs/python", "application/x-www-form-urlencoded", query.encode().replace(b"%40%40", b"\xff\xfe")


def test_invalid_utf8_in_any_field_of_any_route_is_a_400_in_its_dialect(target: Target) -> None:
    cases = 0
    with httpx.Client(timeout=30) as client:
        for route, content_type, body in invalid_utf8_requests():
            listener = {
                "/api/v1/l": 1, "/v1/logs": 1, "/api/v1/m": 2, "/v1/metri": 2, "/_bulk": 1, "/{index}/": 1, "/services": 1,
                "/loki/api": 1, "/api/v1/w": 2, "/collectd": 2,
            }.get(route[:9], 3)
            for url in (target.urls[0], target.urls[listener]):
                response = client.post(url + route, content=body, headers={"Content-Type": content_type})
                cases += 1
                assert response.status_code == 400, (url, route, body[:200], response.status_code, response.text[:300])
                if route in OTLP_ROUTES and content_type == "application/x-protobuf":
                    assert Status.FromString(response.content).code == 3  # INVALID_ARGUMENT
                elif route in OTLP_ROUTES:
                    assert json_format.Parse(response.content, Status()).code == 3
                elif route in ELASTIC_ROUTES:
                    assert response.json()["error"]["type"] == "x_content_parse_exception"
                elif route.split("?")[0] in HEC_ROUTES:
                    assert response.json() == {"text": "Invalid data format", "code": 6}
                elif route in LOKI_ROUTES:
                    assert response.headers["Content-Type"].startswith("text/plain") and response.text.strip()
                elif route in REMOTE_WRITE_ROUTES:
                    assert response.headers["Content-Type"].startswith("text/plain") and response.text.startswith("malformed")
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
        (target.env["APPLICATION_TOPIC"], target.accepted_logs, target.otlp_logs + target.hec_logs + target.loki_logs),
        (target.env["INFRASTRUCTURE_TOPIC"], target.accepted_metrics, target.otlp_metrics + target.remote_write_metrics),
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
