"""What every ingest route does after decoding: turn events into records and submit them."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable
from typing import TypeVar

from quart import Response, request

from app import events
from app.http.errors import HTTPError, json_response
from app.kafka.producer import Record
from app.observability.metrics import Metrics
from app.observability.tracing import TraceContext, continue_trace
from app.profile import Outcome, ProducerProfile

T = TypeVar("T")


def request_trace() -> TraceContext:
    return continue_trace(request.headers.get("traceparent"), request.headers.get("tracestate"))


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


def new_event_id() -> str:
    return str(uuid.uuid4())


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
        check_event_sizes(records, self._max_event_bytes)
        size = sum(record.size for record in records)
        outcome = self.profile.submit(records, size)
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
        headers = {"traceparent": trace.traceparent}
        if single:
            return json_response({"status": "accepted", "eventId": event_ids[0]}, 202, headers)
        return json_response({"status": "accepted", "count": len(event_ids), "eventIds": event_ids}, 202, headers)
