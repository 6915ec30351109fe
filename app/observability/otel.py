"""OpenTelemetry spans of ingest requests, exported over OTLP/HTTP.

Imported only when an OTLP endpoint is configured (:func:`build_tracing`): without one, no
OpenTelemetry SDK module is loaded and no span object is ever made.

Per ingest request: a SERVER span (the caller's span as parent), an ``enqueue`` span around the
profile submission and a ``deliver`` span from enqueue to the last delivery report of that
submission. The request span takes the ids of the request's :class:`TraceContext`, so the
``traceparent`` in the response and in the Kafka records names the exported span.

Spans end on the trio thread; the SDK's BatchSpanProcessor queues them in a bounded deque
(dropping when full) and exports from its own thread, so the trio thread never waits on export.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.config import Settings
from app.core import DeliveryObserver, Outcome, Record, Sink
from app.observability.tracing import TraceContext


def traces_endpoint(settings: Settings) -> str:
    """The OTLP/HTTP traces URL: the signal-specific setting as it is, else ``/v1/traces`` under the base."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"


class _ChosenIds(IdGenerator):
    """Gives the next span the ids a TraceContext already chose; random ids to every other span."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_trace_id(self) -> int:
        chosen, self.trace_id = self.trace_id, None
        return self._random.generate_trace_id() if chosen is None else chosen

    def generate_span_id(self) -> int:
        chosen, self.span_id = self.span_id, None
        return self._random.generate_span_id() if chosen is None else chosen


class Tracing:
    """The process's tracer provider and the spans of its requests (an :class:`app.core.Tracer`)."""

    def __init__(self, settings: Settings) -> None:
        self._ids = _ChosenIds()
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.otel_service_name}), id_generator=self._ids
        )
        # Queue size, batch size and delay: the SDK's OTEL_BSP_* variables; headers, timeout,
        # compression: the exporter's OTEL_EXPORTER_OTLP_* variables.
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint(settings))))
        self._tracer = self._provider.get_tracer("kafka-log-gateway")

    def start_request(self, name: str, route: str, listener: str, trace: TraceContext) -> RequestSpan:
        """The SERVER span of a request, with the trace id and span id of ``trace``."""
        parent = None
        if trace.parent_span_id is not None:
            caller = trace_api.SpanContext(
                int(trace.trace_id, 16),
                int(trace.parent_span_id, 16),
                is_remote=True,
                trace_flags=trace_api.TraceFlags(int(trace.flags, 16)),
                trace_state=trace_api.TraceState.from_header([trace.tracestate] if trace.tracestate else []),
            )
            parent = trace_api.set_span_in_context(trace_api.NonRecordingSpan(caller))
        else:
            self._ids.trace_id = int(trace.trace_id, 16)
        self._ids.span_id = int(trace.span_id, 16)
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": name.split(" ", 1)[0], "http.route": route, "service": listener},
        )
        return RequestSpan(self._tracer, span)

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread. Blocking."""
        self._provider.shutdown()


class RequestSpan:
    """The span of one request, and the spans it starts below it (an :class:`app.core.Span`)."""

    def __init__(self, tracer: trace_api.Tracer, span: Span) -> None:
        self._tracer = tracer
        self.span = span
        self._context = trace_api.set_span_in_context(span)

    def end(self, status_code: int) -> None:
        self.span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()

    def enqueue(self, sink: Sink, records: list[Record], size: int) -> Outcome:
        """``sink.submit`` in an ``enqueue`` span; when accepted, a ``deliver`` span follows the records."""
        self.span.set_attribute("events", len(records))
        started = time.time_ns()
        attributes: dict[str, AttributeValue] = {"events": len(records), "bytes": size, "service": sink.name}
        enqueue = self._tracer.start_span("enqueue", context=self._context, start_time=started, attributes=attributes)
        outcome = sink.submit(records, size)
        enqueue.set_attribute("outcome", outcome.value)
        enqueue.end()
        if outcome is Outcome.ACCEPTED and self.span.is_recording():
            # The producer task takes the records only after this handler yields: in time to see this.
            deliver = self._tracer.start_span(
                "deliver",
                context=self._context,
                start_time=started,
                attributes={**attributes, "messaging.destination.name": sink.topic},
            )
            # An observer already on the records (a protocol's acknowledgement) is told too.
            settlement = Settlement(deliver, len(records), records[0].settlement if records else None)
            for record in records:
                record.settlement = settlement
        return outcome

    @contextmanager
    def child(self, name: str, events: int) -> Iterator[None]:
        self.span.set_attribute("events", events)
        with self._tracer.start_as_current_span(name, context=self._context) as span:
            span.set_attribute("events", events)
            yield


class Settlement:
    """One submission's ``deliver`` span: counts its records' fates on the trio thread; the last one ends it.

    ``failed``: records the topic refused; each then ends up ``dead_lettered`` or ``lost``.
    ``then``: the observer the records had before (a protocol's acknowledgement), told the same.
    """

    __slots__ = ("_span", "_pending", "delivered", "failed", "dead_lettered", "lost", "_then")

    def __init__(self, span: Span, events: int, then: DeliveryObserver | None = None) -> None:
        self._span = span
        self._pending = events
        self.delivered = self.failed = self.dead_lettered = self.lost = 0
        self._then = then

    def delivered_to(self, dead_letter_topic: bool) -> None:
        if dead_letter_topic:
            self.dead_lettered += 1
        else:
            self.delivered += 1
        self._settle()
        if self._then is not None:
            self._then.delivered_to(dead_letter_topic)

    def refused(self) -> None:
        self.failed += 1
        if self._then is not None:
            self._then.refused()

    def lose(self) -> None:
        self.lost += 1
        self._settle()
        if self._then is not None:
            self._then.lose()

    def undelivered(self) -> None:
        pass  # sent again: its fate is still to come

    def _settle(self) -> None:
        self._pending -= 1
        if self._pending:
            return
        span = self._span
        span.set_attributes(
            {"delivered": self.delivered, "failed": self.failed, "dead_lettered": self.dead_lettered, "lost": self.lost}
        )
        if self.failed:
            span.set_status(Status(StatusCode.ERROR, f"{self.failed} records refused by Kafka"))
        span.end()
