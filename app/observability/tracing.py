"""W3C trace context: take ``traceparent`` from a request or start one, and hand it on.

The gateway is one hop of the trace: it keeps the caller's trace id and flags, and names
a span of its own as the parent of what it writes to Kafka. With OpenTelemetry export on
(:mod:`app.observability.otel`), the exported request span is created with these very ids.

``X-Request-ID`` goes along the same way: the caller's value when it is a sane one, else a new
UUID; it is echoed in the response and written to Kafka as the ``x-request-id`` header.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

from app.ids import new_uuids

_TRACEPARENT: Final = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_INVALID_TRACE_ID: Final = "0" * 32
_INVALID_SPAN_ID: Final = "0" * 16
# Visible ASCII, bounded: the value is echoed in a response header and copied into every record.
_REQUEST_ID: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str
    tracestate: str | None = None
    # The caller's span (None when this hop started the trace): the parent of ours.
    parent_span_id: str | None = None
    request_id: str | None = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        headers = [("traceparent", self.traceparent.encode())]
        if self.tracestate:
            headers.append(("tracestate", self.tracestate.encode()))
        if self.request_id:
            headers.append(("x-request-id", self.request_id.encode()))
        return headers


def _new_span_id() -> str:
    return os.urandom(8).hex()


def valid_request_id(value: str | None) -> str | None:
    """The caller's ``X-Request-ID`` when it can be passed on as it is."""
    return value if value is not None and _REQUEST_ID.match(value) else None


def request_context(traceparent: str | None, tracestate: str | None, request_id: str | None) -> TraceContext:
    """The context of a request: its trace (continued or new) and its request id (given or new)."""
    return continue_trace(traceparent, tracestate, valid_request_id(request_id) or new_uuids(1)[0])


def continue_trace(
    traceparent: str | None, tracestate: str | None = None, request_id: str | None = None
) -> TraceContext:
    """The context of this hop: the caller's trace when its header is valid, else a new one."""
    if traceparent:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match:
            version, trace_id, span_id, flags, rest = match.groups()
            valid = (
                version != "ff"
                and not (version == "00" and rest)
                and trace_id != _INVALID_TRACE_ID
                and span_id != _INVALID_SPAN_ID
            )
            if valid:
                return TraceContext(trace_id, _new_span_id(), flags, tracestate or None, span_id, request_id)
    return TraceContext(os.urandom(16).hex(), _new_span_id(), "01", None, None, request_id)
