"""The pipeline at the ASGI level: how it reads a body, routes and answers (pure logic, a stream that takes anything)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from app.admission import Admission
from app.core import NO_SPAN, NoTracer, Refusal, Span
from app.dialects import native
from app.dialects.base import Accepted, Decoded, Request
from app.http.pipeline import BodyLimits, Ingest, Pipeline
from app.http.routes import Matcher, Route, table
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext

PATH = "/api/v1/logs"
EVENT = b'{"source":"s","level":"INFO","message":"m"}'


class TakesAnything:
    name = "application"

    def __init__(self) -> None:
        self.taken: list[list[Any]] = []
        self.refuse: Refusal | None = None

    def check(self, request: Request) -> None:
        pass

    async def submit(self, decoded: Decoded, request: Request, trace: TraceContext, span: Span) -> Accepted:
        assert span is NO_SPAN
        if self.refuse is not None:
            raise self.refuse
        self.taken.append(decoded.events)
        return Accepted([trace.request_id or ""] * len(decoded.events))


async def fallback(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def pipeline(
    stream: TakesAnything, *, body_timeout: float = 5.0, max_bytes: int = 1000, metrics: Metrics | None = None
) -> Pipeline:
    metrics = metrics or Metrics()
    admission = Admission("application", metrics, rate_limit=0, burst=10, api_keys=None, clock=trio.current_time)
    routes = [Route("POST", PATH, "application", native.Single(native.LOGS))]
    entries = [Ingest(route, route.dialect, stream, admission) for route in routes if route.dialect]
    limits = BodyLimits(max_request_bytes=max_bytes, max_decompressed_bytes=max_bytes, body_timeout=body_timeout, max_events=10)
    return Pipeline("application", entries, fallback, metrics, NoTracer(), limits)


async def serve(
    app: Pipeline, messages: list[dict[str, Any]], *, then: float | None = None, last: bytes = b"}",
    method: str = "POST", path: str = PATH,
) -> dict[str, Any]:
    """One request: ``messages`` queued before the app runs (as hypercorn-trio queues them), and with
    ``then`` the body's ``last`` part that many seconds later. The answer's status, headers and payload."""
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](10)
    for message in messages:
        to_app.send_nowait(message)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def late() -> None:
        assert then is not None
        await trio.sleep(then)
        await to_app.send({"type": "http.request", "body": last, "more_body": False})

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", b"application/json")]}
    async with trio.open_nursery() as nursery:
        if then is not None:
            nursery.start_soon(late)
        await app(scope, from_server.receive, send)
        nursery.cancel_scope.cancel()
    start, body = sent
    payload = msgspec.json.decode(body["body"]) if body["body"] else None
    return {"status": start["status"], "headers": dict(start["headers"]), "payload": payload}


def part(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_body_already_queued_in_several_parts_is_taken_whole() -> None:
    stream = TakesAnything()
    answer = await serve(pipeline(stream), [part(EVENT[:10], True), part(EVENT[10:], True), part(b"", False)])
    assert answer["status"] == 202
    assert [event.message for [event] in stream.taken] == ["m"]
    assert answer["headers"][b"x-request-id"].decode() == answer["payload"]["eventId"]
    assert answer["headers"][b"traceparent"].startswith(b"00-")


async def test_the_rest_of_a_body_is_awaited_within_the_body_timeout() -> None:
    stream = TakesAnything()
    answer = await serve(pipeline(stream, body_timeout=5.0), [part(EVENT[:-1], True)], then=0.05)
    assert answer["status"] == 202
    assert len(stream.taken) == 1


async def test_a_body_that_stops_arriving_is_answered_408_and_the_connection_closed() -> None:
    stream = TakesAnything()
    with trio.fail_after(5):
        answer = await serve(pipeline(stream, body_timeout=0.2), [part(EVENT[:-1], True)], then=3.0)
    assert answer["status"] == 408
    assert answer["headers"][b"connection"] == b"close"
    assert answer["payload"]["error"] == "request timeout"
    assert stream.taken == []


async def test_a_body_over_the_limit_is_refused_413_whether_queued_or_awaited() -> None:
    stream = TakesAnything()
    big = EVENT[:-1] + b" " * 20
    limit = len(big) + 1
    queued = await serve(pipeline(stream, max_bytes=limit), [part(big, True), part(b"}" * 2, False)])
    awaited = await serve(pipeline(stream, max_bytes=limit), [part(big, True)], then=0.01, last=b"}}")
    at_the_limit = await serve(pipeline(stream, max_bytes=limit), [part(big, True)], then=0.01, last=b"}")
    for refused in (queued, awaited):
        assert refused["status"] == 413 and refused["headers"][b"connection"] == b"close"
    assert at_the_limit["status"] == 202
    assert len(stream.taken) == 1


async def test_a_client_gone_before_its_body_arrived_gets_no_answer() -> None:
    stream = TakesAnything()
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](10)
    to_app.send_nowait({"type": "http.disconnect"})
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": [(b"content-type", b"application/json")]}
    await pipeline(stream)(scope, from_server.receive, send)
    assert sent == [] and stream.taken == []


@pytest.mark.parametrize(
    "body, status, error",
    [
        (b'{"source":"s","level":"INFO","message":"\xff\xfe"}', 400, "malformed JSON"),
        (b'{"source":"\xff","level":"INFO","message":"m"}', 400, "malformed JSON"),
        (b'{"source":"s","level":"LOUD","message":"m"}', 422, "invalid event"),
        (b"{", 400, "malformed JSON"),
    ],
)
async def test_a_body_the_dialect_cannot_take_is_refused_in_its_terms_and_nothing_is_submitted(
    body: bytes, status: int, error: str
) -> None:
    stream = TakesAnything()
    answer = await serve(pipeline(stream), [part(body, False)])
    assert (answer["status"], answer["payload"]["error"]) == (status, error)
    assert stream.taken == []


async def test_a_refusal_of_the_stream_keeps_its_headers_and_events_are_counted_by_dialect() -> None:
    stream, metrics = TakesAnything(), Metrics()
    app = pipeline(stream, metrics=metrics)

    def events(outcome: str) -> float | None:
        labels = {"service": "application", "dialect": "native", "outcome": outcome}
        return metrics.registry.get_sample_value("gateway_ingest_events_total", labels)

    assert (events("accepted"), events("refused")) == (0.0, 0.0)
    assert (await serve(app, [part(EVENT, False)]))["status"] == 202
    stream.refuse = Refusal(503, "buffer full", "retry later", headers={"Retry-After": "7"})
    answer = await serve(app, [part(EVENT, False)])
    assert answer["status"] == 503 and answer["headers"][b"retry-after"] == b"7"
    assert answer["payload"] == {"error": "buffer full", "detail": "retry later"}
    assert (events("accepted"), events("refused")) == (1.0, 1.0)


async def test_a_path_of_the_table_with_another_method_is_405_and_other_paths_go_to_the_fallback() -> None:
    stream = TakesAnything()
    refused = await serve(pipeline(stream), [], method="GET")
    assert refused["status"] == 405 and refused["headers"][b"allow"] == b"POST"
    elsewhere = await serve(pipeline(stream), [], method="GET", path="/health")
    assert elsewhere["status"] == 418


def test_templates_match_their_parameters_and_a_route_served_twice_is_refused() -> None:
    route = Route("GET", "/api/v1/transactions/{eventId}", "transaction")
    matcher = Matcher([(route, "status")])
    assert matcher.match("GET", "/api/v1/transactions/abc") == ("status", {"eventId": "abc"})
    assert matcher.match("GET", "/api/v1/transactions/abc/more") is None
    assert matcher.match("POST", "/api/v1/transactions/abc") is None
    assert matcher.methods("/api/v1/transactions/x") == ["GET"]
    with pytest.raises(ValueError, match="two route tables"):
        table([route], [route])
