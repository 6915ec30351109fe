"""The one ingest pipeline: every request of a listener's route table, in every dialect.

An ASGI app in front of the listener's Quart app (which keeps health, readiness, metrics, the
OpenAPI document and the status page). For a request its route table names, whatever its
dialect and with tracing on or off, the steps are the same:

1. the span starts (:data:`~app.core.NO_SPAN` while tracing is off) and the trace context is taken;
2. what the headers alone decide: the API key (401), the stream's checks, the media type (415),
   a declared length over the limit (413);
3. the body, bounded in bytes and in time (413, 408), then its content decoding (gzip; 413 past
   the decompressed limit);
4. the dialect's decode into the stream's events (400, 413, 422);
5. admission: the rate limits of the stream and of the key (429);
6. the stream takes the events (503 when it cannot, 409 for a reused idempotency key);
7. the dialect's answer, or its form of the refusal raised on the way; the trace and request
   id headers, the request metrics and the span's end.

A route of another shipper (the gateway without it in its process) is forwarded to it as it
came; a read-only route (a transaction's status) asks its stream. Quart's per-request cost
(measured on hypercorn-trio: a bare ASGI callable answers about 1.7x the requests per second
of the same handler as a Quart route) stays off every one of these paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from app.admission import Admission
from app.core import Refusal, Span, Tracer
from app.dialects.base import Accepted, Answer, Dialect, Limits, Request, json_error
from app.http.body import check_length, check_media_type, decode_content
from app.http.routes import Matcher, Route, View
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext, request_context
from app.streams import Stream

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CLOSE: Final = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class Ingest:
    """An ingest route bound to the stream and the admission of the shipper that serves it."""

    route: Route
    dialect: Dialect
    stream: Stream
    admission: Admission


@dataclass(frozen=True, slots=True)
class Lookup:
    """A read-only route bound to its stream."""

    route: Route
    view: View
    stream: Stream
    admission: Admission


class Forwarded(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    @property
    def body(self) -> bytes: ...


class Upstream(Protocol):
    """The instances of a shipper that runs apart (:class:`app.gateway.upstream.Upstream`)."""

    async def forward(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Forwarded: ...


@dataclass(frozen=True, slots=True)
class Forward:
    """A route of a shipper that runs apart: forwarded to it unchanged."""

    route: Route
    upstream: Upstream


Entry = Ingest | Lookup | Forward


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_request_bytes: int
    max_decompressed_bytes: int
    body_timeout: float
    max_events: int


class _ClientGone(Exception):
    """The client disconnected before its body was read: nothing to answer."""


def _queued(receive: Receive) -> Callable[[], Message] | None:
    """``receive_nowait`` when ``receive`` is a trio memory channel's (hypercorn-trio's is), else None."""
    channel = getattr(receive, "__self__", None)
    return channel.receive_nowait if isinstance(channel, trio.MemoryReceiveChannel) else None


class Pipeline:
    """An ASGI app: the routes of ``entries``, and ``fallback`` (the listener's Quart app) for the rest."""

    def __init__(
        self,
        listener: str,
        entries: Sequence[Entry],
        fallback: Any,  # the listener's Quart app: an ASGI app, typed more narrowly by Quart
        metrics: Metrics,
        tracer: Tracer,
        limits: BodyLimits,
    ) -> None:
        self._name = listener
        self._matcher = Matcher([(entry.route, entry) for entry in entries])
        self._fallback = fallback
        self._tracer = tracer
        self._limits = limits
        self._decode_limits = Limits(limits.max_events, limits.max_decompressed_bytes)
        self._requests = metrics.http_requests
        self._duration = metrics.http_duration
        self._metric_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._ingest_events = metrics.ingest_events
        self._skipped = metrics.ingest_skipped
        self._event_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        for entry in entries:
            if isinstance(entry, Ingest):
                self._events(entry.stream.name, entry.dialect.name)  # exported at 0 from the start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self._matcher.match(scope["method"], scope["path"])
            if found is not None:
                entry, params = found
                await self._serve(entry, params, scope, receive, send)
                return
            allowed = self._matcher.methods(scope["path"])
            if allowed:
                await self._not_allowed(allowed, scope, receive, send)
                return
        await self._fallback(scope, receive, send)

    async def _not_allowed(self, allowed: list[str], scope: Scope, receive: Receive, send: Send) -> None:
        """405 for a method the route table does not serve at a path it has."""
        refused = json_error(Refusal(405, "method not allowed", f"{scope['path']} takes {', '.join(allowed)}"))
        headers = [
            (b"content-type", refused.content_type.encode()), (b"content-length", str(len(refused.body)).encode()),
            (b"allow", ", ".join(allowed).encode()),
        ]
        if scope.get("http_version") == "2":
            await self._drain(receive)
        else:
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": refused.body})
        self._requests.labels(self._name, "unmatched", "405").inc()

    async def _serve(self, entry: Entry, params: Mapping[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        route = entry.route
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        request = Request(scope["method"], scope["path"], headers, params, scope.get("query_string", b""))
        trace = request_context(headers.get("traceparent"), headers.get("tracestate"), headers.get("x-request-id"))
        span = self._tracer.start_request(f"{route.method} {route.path}", route.path, self._name, trace)
        body_read = [False]
        status = 500
        tls = scope["extensions"].get("tls") if "extensions" in scope else None
        identities: frozenset[str] = tls["client_cert_identities"] if tls else frozenset()
        try:
            if isinstance(entry, Forward):
                status, answer_headers, body = await self._forward(entry, request, scope, receive, body_read)
            else:
                answer = await self._answer(entry, request, identities, trace, span, receive, body_read)
                status, body = answer.status, answer.body
                answer_headers = [(b"content-type", answer.content_type.encode("latin-1"))]
                for name, value in answer.headers.items():
                    answer_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
                answer_headers.append((b"traceparent", trace.traceparent.encode()))
                if trace.request_id:
                    answer_headers.append((b"x-request-id", trace.request_id.encode("latin-1")))
            answer_headers.append((b"content-length", str(len(body)).encode()))
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if has_body and not body_read[0] and not any(name == b"connection" for name, _ in answer_headers):
                # Answered without reading the body: the next request would sit behind its bytes.
                answer_headers.append(_CLOSE)
            if scope.get("http_version") == "2":
                # HTTP/2 has no Connection header (RFC 9113 8.2.2): h2 refuses to send one.
                answer_headers = [(name, value) for name, value in answer_headers if name != b"connection"]
                if not body_read[0]:
                    await self._drain(receive)
            await send({"type": "http.response.start", "status": status, "headers": answer_headers})
            await send({"type": "http.response.body", "body": body})
        except _ClientGone:
            status = 499  # nginx's name for it: the span and the metrics see a request nobody waits for
            return
        finally:
            span.end(status)
        count, duration = self._children(route.path, status)
        count.inc()
        duration.observe(time.perf_counter() - started)

    def entry(self, method: str, path: str) -> Entry | None:
        """The route table's entry for a method and path (the OTLP/gRPC services serve the gateway's)."""
        found = self._matcher.match(method, path)
        return found[0] if found is not None else None

    async def _answer(
        self, entry: Ingest | Lookup, request: Request, identities: frozenset[str], trace: TraceContext, span: Span,
        receive: Receive, body_read: list[bool],
    ) -> Answer:
        if isinstance(entry, Ingest):

            async def body() -> bytes:
                request.media_type = check_media_type(request.headers.get("content-type"), entry.dialect.media_types)
                read = await self._body(request, receive, body_read)
                return decode_content(
                    read, request.headers.get("content-encoding"), self._limits.max_request_bytes,
                    self._limits.max_decompressed_bytes,
                )

            return await self.ingest(entry, request, identities, trace, span, body)
        try:
            entry.admission.authenticate(request.headers.get("authorization"), identities)
            return await entry.view.respond(entry.stream, request)
        except Refusal as refusal:
            return json_error(refusal)
        except Exception as error:
            log.exception("unhandled error on %s %s", self._name, entry.route.path)
            return json_error(Refusal(500, "internal error", type(error).__name__))

    async def ingest(
        self, entry: Ingest, request: Request, identities: frozenset[str], trace: TraceContext, span: Span,
        body: Callable[[], Awaitable[bytes]],
    ) -> Answer:
        """The steps of an ingest request from its credentials on: the key (its header, else the client
        certificate's ``identities``), the stream's checks, ``body()`` (what the transport received, inflated),
        the dialect's decode, admission, the stream, and the dialect's answer or its form of the refusal.

        HTTP reads the body here; OTLP/gRPC (:mod:`app.otlp_grpc`) hands over its message.
        """
        dialect = entry.dialect
        try:
            key = entry.admission.authenticate(dialect.authorization(request), identities)
            entry.stream.check(request)
            decoded = dialect.decode(await body(), request, self._decode_limits)
            count = len(decoded.events)
            if count:
                events = self._events(entry.stream.name, dialect.name)
                try:
                    entry.admission.admit(key, count)
                    accepted = await entry.stream.submit(decoded, request, trace, span)
                except Refusal:
                    events[1].inc(count)
                    raise
                events[0].inc(count)
            else:
                accepted = Accepted([])
            for reason, skipped in decoded.skipped.items():
                self._skipped.labels(entry.stream.name, dialect.name, reason).inc(skipped)
            return dialect.answer(decoded, accepted, request)
        except Refusal as refusal:
            return dialect.refuse(refusal, request)
        except _ClientGone:
            raise
        except Exception as error:
            log.exception("unhandled error on %s %s", self._name, entry.route.path)
            return dialect.refuse(Refusal(500, "internal error", type(error).__name__), request)

    async def _forward(
        self, entry: Forward, request: Request, scope: Scope, receive: Receive, body_read: list[bool]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            body = await self._body(request, receive, body_read)
            target: bytes = scope.get("raw_path") or scope["path"].encode()
            if request.query:
                target += b"?" + request.query
            headers = list(scope["headers"])
            client = scope.get("client")
            if client:
                headers.append((b"x-forwarded-for", str(client[0]).encode()))
            answer = await entry.upstream.forward(request.method, target, headers, body)
        except Refusal as refusal:
            refused = json_error(refusal)
            answer_headers = [(b"content-type", refused.content_type.encode())]
            answer_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refused.headers.items()]
            return refused.status, answer_headers, refused.body
        return answer.status, list(answer.headers), answer.body

    async def _body(self, request: Request, receive: Receive, body_read: list[bool]) -> bytes:
        length = request.headers.get("content-length")
        check_length(
            int(length) if length is not None and length.isascii() and length.isdigit() else None,
            self._limits.max_request_bytes,
        )
        body = await self._read(receive)
        body_read[0] = True
        return body

    async def _drain(self, receive: Receive) -> None:
        """Over HTTP/2, take the rest of a body answered early (within the body's bounds): hypercorn's h2
        code (0.18, its issue #329) resets the whole connection on DATA for a stream it has answered."""
        try:
            await self._read(receive)
        except Refusal:
            pass

    def _events(self, stream: str, dialect: str) -> tuple[Any, Any]:
        """The accepted and refused event counters of a stream and dialect."""
        children = self._event_children.get((stream, dialect))
        if children is None:
            children = self._event_children[(stream, dialect)] = (
                self._ingest_events.labels(stream, dialect, "accepted"),
                self._ingest_events.labels(stream, dialect, "refused"),
            )
        return children

    def _children(self, path: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of a path and status (a labels lookup is not free)."""
        children = self._metric_children.get((path, status))
        if children is None:
            children = self._metric_children[(path, status)] = (
                self._requests.labels(self._name, path, str(status)),
                self._duration.labels(self._name, path),
            )
        return children

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        # What the server has queued already is taken at once: most bodies arrive with their
        # headers, and a cancel scope per request cost more than the rest of this read.
        queued = _queued(receive)
        if queued is not None:
            while True:
                try:
                    message = queued()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if self._last(message, chunks):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        timeout = self._limits.body_timeout
        with trio.move_on_after(timeout) as waited:
            while True:
                if self._last(await receive(), chunks):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert waited.cancelled_caught
        raise Refusal(
            408, "request timeout", f"the body did not arrive within {timeout:.0f} s", headers={"Connection": "close"}
        )

    def _last(self, message: Message, chunks: list[bytes]) -> bool:
        """Take one ASGI receive message into ``chunks``; whether it ends the body."""
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if sum(map(len, chunks)) > self._limits.max_request_bytes:
            raise Refusal(
                413, "payload too large", f"the body has more than {self._limits.max_request_bytes} bytes",
                headers={"Connection": "close"},
            )
        return not message.get("more_body", False)
