"""W3C trace context: take ``traceparent`` from a request or start one, and hand it on.

The gateway is one hop of the trace: it keeps the caller's trace id and flags, and names
a span of its own as the parent of what it writes to Kafka.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

_TRACEPARENT: Final = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_INVALID_TRACE_ID: Final = "0" * 32
_INVALID_SPAN_ID: Final = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        headers = [("traceparent", self.traceparent.encode())]
        if self.tracestate:
            headers.append(("tracestate", self.tracestate.encode()))
        return headers


def _new_span_id() -> str:
    return os.urandom(8).hex()


def continue_trace(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
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
                return TraceContext(trace_id, _new_span_id(), flags, tracestate or None)
    return TraceContext(os.urandom(16).hex(), _new_span_id(), "01")
