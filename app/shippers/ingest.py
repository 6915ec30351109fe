"""What every ingest route does: admit, read, decode, turn events into records and submit them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from quart import Response, g, request
from quart_trio import QuartTrio

from app import events
from app.admission import Admission
from app.auth import ApiKey
from app.config import Settings
from app.http.body import JSON, NDJSON, check_media_type, read_body
from app.http.errors import HTTPError, json_response
from app.http.fastlane import Headers, Ingest, add_fast_routes
from app.kafka.producer import Record
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext, request_context
from app.profile import Outcome, ProducerProfile

if TYPE_CHECKING:
    from app.observability.otel import RequestSpan

T = TypeVar("T")

SINGLE_TYPES: Final = frozenset({JSON})
BATCH_TYPES: Final = frozenset({JSON, NDJSON})


def request_trace() -> TraceContext:
    """The request's trace context and request id (made once per request; the listener may have made it)."""
    trace: TraceContext | None = g.get("trace")
    if trace is None:
        trace = g.trace = request_context(
            request.headers.get("traceparent"), request.headers.get("tracestate"), request.headers.get("X-Request-ID")
        )
    return trace


def request_span() -> RequestSpan | None:
    """The current Quart request's span: set only when tracing is on."""
    span: RequestSpan | None = g.get("span")
    return span


def decode_or_raise(decode: Callable[[], T]) -> T:
    """Run a decoder, mapping its errors onto 400, 413 and 422."""
    try:
        return decode()
    except events.InvalidJSON as error:
        raise HTTPError(400, "malformed JSON", str(error)) from None
    except events.TooManyEvents as error:
        raise HTTPError(413, "too many events", str(error)) from None
    except events.InvalidEvents as error:
        raise HTTPError(422, "invalid event", error.errors) from None


def received_at() -> str:
    return events.format_timestamp(dt.datetime.now(dt.timezone.utc))


def check_event_sizes(records: list[Record], max_event_bytes: int) -> None:
    too_large = [
        {"index": index, "message": f"the event encodes to {len(r.value)} bytes, the limit is {max_event_bytes}"}
        for index, r in enumerate(records)
        if len(r.value) > max_event_bytes
    ]
    if too_large:
        raise HTTPError(413, "event too large", too_large[: events.MAX_ERRORS_REPORTED])


class Submitter:
    """Submits a request's records to a profile and answers for the outcome."""

    def __init__(self, profile: ProducerProfile, metrics: Metrics, *, retry_after_seconds: int, max_event_bytes: int) -> None:
        self.profile = profile
        self._metrics = metrics
        self._retry_after = str(retry_after_seconds)
        self._max_event_bytes = max_event_bytes

    def submit(self, records: list[Record], event_ids: list[str], trace: TraceContext, *, single: bool) -> Response:
        """For a Quart route: the 202 answer once the records are taken."""
        payload = self.accept(records, event_ids, request_span(), single=single)
        return json_response(payload, 202, {"traceparent": trace.traceparent})

    def accept(
        self, records: list[Record], event_ids: list[str], span: RequestSpan | None, *, single: bool
    ) -> dict[str, Any]:
        """Take the records (or raise the refusal); the payload of the 202 answer."""
        self.send(records, span)
        if single:
            return {"status": "accepted", "eventId": event_ids[0]}
        return {"status": "accepted", "count": len(event_ids), "eventIds": event_ids}

    def send(self, records: list[Record], span: RequestSpan | None) -> None:
        """Hand the records to the profile; 413 or 503 (with Retry-After) when they cannot be taken.

        ``span``: the request's span, only when tracing is on.
        """
        check_event_sizes(records, self._max_event_bytes)
        size = sum(record.size for record in records)
        outcome = self.profile.submit(records, size) if span is None else span.submit(self.profile, records, size)
        if outcome is Outcome.FULL:
            raise HTTPError(
                503,
                "buffer full",
                f"the {self.profile.name} buffer is full; retry later",
                headers={"Retry-After": self._retry_after},
            )
        if outcome is Outcome.UNAVAILABLE:
            raise HTTPError(
                503,
                "kafka unavailable",
                f"the {self.profile.name} circuit breaker is open ({self.profile.breaker.reason}); retry later",
                headers={"Retry-After": str(max(1, math.ceil(self.profile.breaker.retry_after())))},
            )
        if outcome is Outcome.CLOSED:
            raise HTTPError(
                503, "shutting down", "this instance is shutting down", headers={"Retry-After": self._retry_after}
            )


E = TypeVar("E")


@dataclass(frozen=True)
class EventKind(Generic[E]):
    """What a channel shipper's routes need to know about one kind of event."""

    name: str  # in route endpoint names: post_<name>, post_<name>_batch
    decode_one: Callable[[bytes], E]
    decode_batch: Callable[[bytes, int], list[E]]
    decode_ndjson: Callable[[bytes, int], list[E]]
    records: Callable[[list[E], TraceContext], tuple[list[Record], list[str]]]


class EventRoutes(Generic[E]):
    """A single-event and a batch route (JSON or NDJSON) feeding one producer profile."""

    def __init__(
        self, settings: Settings, kind: EventKind[E], submitter: Submitter, admission: Admission
    ) -> None:
        self._settings = settings
        self._kind = kind
        self._submitter = submitter
        self._admission = admission

    def register(self, app: QuartTrio, route: str, batch_route: str) -> None:
        register_ingest(app, self, self._settings, self._kind.name, route, batch_route)

    # -- the routes' work, free of any framework (their Quart views and the fast lane share it) ----

    def check(self, headers: Headers, *, batch: bool) -> tuple[ApiKey | None, str]:
        """What the headers alone decide (401, 415), before the body is read."""
        key = self._admission.authenticate(headers.get("authorization"))
        return key, check_media_type(headers.get("content-type"), BATCH_TYPES if batch else SINGLE_TYPES)

    async def take(
        self, checked: tuple[ApiKey | None, str], body: bytes, trace: TraceContext, span: RequestSpan | None,
        *, batch: bool,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Admit, decode and submit a request's body; the payload of its 202 answer."""
        key, kind = checked
        if batch:
            limit = self._settings.max_batch_events
            decode = self._kind.decode_ndjson if kind == NDJSON else self._kind.decode_batch
            decoded = decode_or_raise(lambda: decode(body, limit))
            self._admission.admit(key, len(decoded))
        else:
            # One event: refused before decoding. (After reading the body: an unread body would
            # cost the client its keep-alive connection.)
            self._admission.admit(key, 1)
            decoded = [decode_or_raise(lambda: self._kind.decode_one(body))]
        records, event_ids = self._kind.records(decoded, trace)
        return self._submitter.accept(records, event_ids, span, single=not batch), {}


def register_ingest(app: QuartTrio, routes: Ingest, settings: Settings, name: str, path: str, batch_path: str) -> None:
    """``routes`` as the Quart views ``post_<name>`` and ``post_<name>_batch``, and on the fast lane."""

    async def post(batch: bool) -> Response:
        checked = routes.check(request.headers, batch=batch)
        body = await read_body(
            request, max_bytes=settings.max_request_bytes, max_decompressed_bytes=settings.max_decompressed_bytes
        )
        trace = request_trace()
        payload, extra = await routes.take(checked, body, trace, request_span(), batch=batch)
        return json_response(payload, 202, {"traceparent": trace.traceparent, **extra})

    async def post_one() -> Response:
        return await post(False)

    async def post_batch() -> Response:
        return await post(True)

    app.add_url_rule(path, f"post_{name}", post_one, methods=["POST"])
    app.add_url_rule(batch_path, f"post_{name}_batch", post_batch, methods=["POST"])
    add_fast_routes(app, routes, path, batch_path)
