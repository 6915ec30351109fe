"""How the fast lane reads a body, at the ASGI level: pure logic, with a route that takes anything."""

from __future__ import annotations

from typing import Any

import msgspec
import trio
from quart_trio import QuartTrio

from app.http.fastlane import FastLane, add_fast_routes
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext

PATH = "/api/v1/logs"


class TakesAnything:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def check(self, headers: Any, *, batch: bool) -> None:
        return None

    async def take(
        self, checked: Any, body: bytes, trace: TraceContext, span: Any, *, batch: bool
    ) -> tuple[dict[str, Any], dict[str, str]]:
        assert span is None and not batch
        self.bodies.append(body)
        return {"status": "accepted", "requestId": trace.request_id}, {}


def lane(route: TakesAnything, *, body_timeout: float = 5.0, max_bytes: int = 1000) -> FastLane:
    app = QuartTrio(__name__)
    add_fast_routes(app, route, PATH, PATH + "/batch")
    app.config["BODY_TIMEOUT"] = body_timeout
    return FastLane(app, "application", Metrics(), max_request_bytes=max_bytes, max_decompressed_bytes=max_bytes)


async def serve(
    fast: FastLane, messages: list[dict[str, Any]], *, then: float | None = None, last: bytes = b"}"
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

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": [(b"content-type", b"application/json")]}
    async with trio.open_nursery() as nursery:
        if then is not None:
            nursery.start_soon(late)
        await fast(scope, from_server.receive, send)
        nursery.cancel_scope.cancel()
    start, body = sent
    return {"status": start["status"], "headers": dict(start["headers"]), "payload": msgspec.json.decode(body["body"])}


def part(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_body_already_queued_in_several_parts_is_taken_whole() -> None:
    route = TakesAnything()
    answer = await serve(lane(route), [part(b'{"a":', True), part(b"1}", True), part(b"", False)])
    assert answer["status"] == 202
    assert route.bodies == [b'{"a":1}']
    assert answer["headers"][b"x-request-id"].decode() == answer["payload"]["requestId"]


async def test_the_rest_of_a_body_is_awaited_within_the_body_timeout() -> None:
    route = TakesAnything()
    answer = await serve(lane(route, body_timeout=5.0), [part(b'{"a":1', True)], then=0.05)
    assert answer["status"] == 202
    assert route.bodies == [b'{"a":1}']


async def test_a_body_that_stops_arriving_is_answered_408_and_the_connection_closed() -> None:
    route = TakesAnything()
    with trio.fail_after(5):
        answer = await serve(lane(route, body_timeout=0.2), [part(b'{"a":1', True)], then=3.0)
    assert answer["status"] == 408
    assert answer["headers"][b"connection"] == b"close"
    assert answer["payload"]["error"] == "request timeout"
    assert route.bodies == []


async def test_a_body_over_the_limit_is_refused_413_whether_queued_or_awaited() -> None:
    route = TakesAnything()
    queued = await serve(lane(route, max_bytes=10), [part(b"x" * 8, True), part(b"x" * 8, False)])
    awaited = await serve(lane(route, max_bytes=10), [part(b"x" * 8, True)], then=0.01, last=b"x" * 8)
    at_the_limit = await serve(lane(route, max_bytes=10), [part(b"x" * 8, True)], then=0.01, last=b"xx")
    for refused in (queued, awaited):
        assert refused["status"] == 413 and refused["headers"][b"connection"] == b"close"
    assert at_the_limit["status"] == 202
    assert route.bodies == [b"x" * 10]


async def test_a_client_gone_before_its_body_arrived_gets_no_answer() -> None:
    route = TakesAnything()
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](10)
    to_app.send_nowait({"type": "http.disconnect"})
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": []}
    await lane(route)(scope, from_server.receive, send)
    assert sent == [] and route.bodies == []
