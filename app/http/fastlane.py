"""The hot ingest routes served as plain ASGI, in front of a listener's Quart app.

Quart's request and response objects, context pushes and hooks cost more than everything the
gateway itself does for one event (measured on hypercorn-trio: a bare ASGI callable that parses
the body answers about 1.7x the requests per second of the same handler as a Quart route). The
routes that take single events and batches (logs, metrics, transactions) are an :class:`Ingest`,
registered beside their Quart views; :class:`FastLane` serves ``POST`` to exactly those paths and
hands everything else, lifespan included, to the Quart app unchanged.

What the lane does for a request is what the listener's hooks and error handlers do on the
Quart path: the same JSON answers and statuses, ``traceparent`` and ``X-Request-ID`` in the
answer, ``Connection: close`` when the body is left unread, the request counter and latency
histogram. The routes' own work (admission, decoding, submission) is the same code on both
paths. With tracing on, the lane is not used: spans are made by the Quart hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec
import trio
from quart_trio import QuartTrio

from app.http.body import check_length, decode_content
from app.http.errors import HTTPError, error_payload
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext, request_context, valid_request_id

if TYPE_CHECKING:
    from app.observability.otel import RequestSpan

log = logging.getLogger(__name__)

FAST_ROUTES_KEY: Final = "GATEWAY_FAST_ROUTES"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON: Final = (b"content-type", b"application/json")
_CLOSE: Final = (b"connection", b"close")
_encode: Final = msgspec.json.Encoder().encode


class Headers(Protocol):
    """A request's headers by lowercase name: the lane's dict, or a Quart request's headers."""

    def get(self, key: str) -> str | None: ...


class Ingest(Protocol):
    """A single-event and a batch route whose work is free of any framework: the fast lane and
    the routes' Quart views (:func:`app.shippers.ingest.register_ingest`) both call it."""

    def check(self, headers: Headers, *, batch: bool) -> Any:
        """What the headers alone decide (raises HTTPError), before the body is read."""

    async def take(
        self, checked: Any, body: bytes, trace: TraceContext, span: RequestSpan | None, *, batch: bool
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The payload and extra headers of the 202 answer once the body is taken (raises HTTPError).

        ``span``: the request's span, only when tracing is on (never on the fast lane)."""


def add_fast_routes(app: QuartTrio, routes: Ingest, path: str, batch_path: str) -> None:
    app.config.setdefault(FAST_ROUTES_KEY, {}).update({path: (routes, False), batch_path: (routes, True)})


def _queued(receive: Receive) -> Callable[[], MutableMapping[str, Any]] | None:
    """``receive_nowait`` when ``receive`` is a trio memory channel's (hypercorn-trio's is), else None."""
    channel = getattr(receive, "__self__", None)
    return channel.receive_nowait if isinstance(channel, trio.MemoryReceiveChannel) else None


class _ClientGone(Exception):
    """The client disconnected before its body was read: nothing to answer."""


class FastLane:
    """An ASGI app: the fast routes of ``app``, and ``app`` for the rest."""

    def __init__(
        self, app: QuartTrio, name: str, metrics: Metrics, *, max_request_bytes: int, max_decompressed_bytes: int,
    ) -> None:
        self._app = app
        self._name = name
        self._routes: dict[str, tuple[Ingest, bool]] = dict(app.config.get(FAST_ROUTES_KEY, {}))
        self._max_bytes = max_request_bytes
        self._max_decompressed = max_decompressed_bytes
        self._body_timeout = float(app.config["BODY_TIMEOUT"])
        self._requests = metrics.http_requests
        self._duration = metrics.http_duration
        self._metric_children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._routes.get(scope["path"])
            if route is not None:
                await self._serve(scope["path"], *route, scope, receive, send)
                return
        await self._app(scope, receive, send)  # type: ignore[arg-type]

    async def _serve(
        self, path: str, routes: Ingest, batch: bool, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        trace: TraceContext | None = None
        body_read = False
        extra: dict[str, str] = {}
        try:
            checked = routes.check(headers, batch=batch)
            length = headers.get("content-length")
            check_length(int(length) if length is not None and length.isascii() and length.isdigit() else None, self._max_bytes)
            body = await self._read(receive)
            body_read = True
            body = decode_content(body, headers.get("content-encoding"), self._max_bytes, self._max_decompressed)
            trace = request_context(headers.get("traceparent"), headers.get("tracestate"), headers.get("x-request-id"))
            payload, extra = await routes.take(checked, body, trace, None, batch=batch)
            status, answer = 202, _encode(payload)
        except HTTPError as error:
            status, answer, extra = error.status, _encode(error_payload(error)), error.headers
        except _ClientGone:
            return
        except Exception as error:
            log.exception("unhandled error on %s", self._name)
            status, answer = 500, _encode({"error": "internal error", "detail": type(error).__name__})
        response = [_JSON, (b"content-length", str(len(answer)).encode())]
        for name, value in extra.items():
            response.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        if trace is not None:
            response.append((b"traceparent", trace.traceparent.encode()))
            request_id = trace.request_id
        else:
            request_id = valid_request_id(headers.get("x-request-id"))
        if request_id:
            response.append((b"x-request-id", request_id.encode("latin-1")))
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if has_body and not body_read and "Connection" not in extra:
            # Answered without reading the body: the next request would sit behind its bytes.
            response.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": response})
        await send({"type": "http.response.body", "body": answer})
        count, duration = self._children(path, status)
        count.inc()
        duration.observe(time.perf_counter() - started)

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
        with trio.move_on_after(self._body_timeout) as waited:
            while True:
                if self._last(await receive(), chunks):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert waited.cancelled_caught
        raise HTTPError(
            408, "request timeout", f"the body did not arrive within {self._body_timeout:.0f} s",
            headers={"Connection": "close"},
        )

    def _last(self, message: MutableMapping[str, Any], chunks: list[bytes]) -> bool:
        """Take one ASGI receive message into ``chunks``; whether it ends the body."""
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if sum(map(len, chunks)) > self._max_bytes:
            raise HTTPError(
                413, "payload too large", f"the body has more than {self._max_bytes} bytes",
                headers={"Connection": "close"},
            )
        return not message.get("more_body", False)
