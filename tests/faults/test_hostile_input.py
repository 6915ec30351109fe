"""Hostile input on every route: random bodies, headers, encodings, bombs and slow clients.

Every answer is 202 or a refusal with a JSON error, the process never crashes, its memory
stays bounded, and what reaches Kafka (and the outbox) is exactly what was accepted.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Infra
from tests.kafka_reader import KafkaReader
from tests.processes import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.fault]

ROUTES = ["/api/v1/logs", "/api/v1/logs/batch", "/api/v1/transactions", "/api/v1/transactions/batch"]
REFUSALS = {400, 401, 404, 405, 409, 413, 415, 422, 429, 503}
RSS_LIMIT = 512 * 1024 * 1024


@dataclass
class Target:
    urls: list[str]
    pid: int
    env: dict[str, str]
    accepted_logs: set[str] = field(default_factory=set)
    accepted_transactions: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def target(infra: Infra) -> Iterator[Target]:
    limits = {"MAX_REQUEST_BYTES": str(1024 * 1024), "MAX_DECOMPRESSED_BYTES": str(4 * 1024 * 1024), "MAX_EVENT_BYTES": str(256 * 1024)}
    with running_gateway(infra, **limits) as gateway:
        yield Target([gateway.urls[name] for name in ("gateway", "application", "transaction")], gateway.pid, gateway.env)


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
bodies = st.one_of(
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
content_types = st.sampled_from(["application/json", "application/json", "application/json", "application/x-ndjson", "text/plain", "", "application/json; charset=latin-1", "\x00"])
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
    url_index=st.integers(0, 2),
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
    assert response.status_code == 202 or response.status_code in REFUSALS, (response.status_code, response.text[:300])
    answer = response.json()
    if response.status_code != 202:
        assert isinstance(answer["error"], str) and answer["error"]
        return
    ids = answer.get("eventIds") or [answer["eventId"]]
    (target.accepted_logs if "/logs" in route else target.accepted_transactions).update(ids)
    assert psutil.Process(target.pid).memory_info().rss < RSS_LIMIT


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
        assert response.status_code == 202 and time.monotonic() - started < 1.0
        target.accepted_logs.add(response.json()["eventId"])
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
            f"{target.urls[2]}/api/v1/transactions",
            json={"userId": "ok", "type": "DEPOSIT", "amount": i + 1, "currency": "EUR"},
        )
        target.accepted_transactions.add(response.json()["eventId"])
    logs = KafkaReader(infra.kafka_bootstrap_servers).read_sync(
        target.env["APPLICATION_TOPIC"],
        until=lambda rs: target.accepted_logs <= {r.headers["event-id"].decode() for r in rs},
        timeout=60,
        settle=2.0,
    )
    assert sorted(r.headers["event-id"].decode() for r in logs) == sorted(target.accepted_logs)
    with psycopg.connect(target.env["DATABASE_URL"]) as conn:
        stored = {str(row[0]) for row in conn.execute("SELECT event_id FROM outbox")}
    assert stored == target.accepted_transactions
    assert psutil.Process(target.pid).memory_info().rss < RSS_LIMIT
