"""The infrastructure shipper (8082): host metrics from this host's collector, from remote agents
and from OpenTelemetry SDKs and collectors (OTLP/HTTP).

Every sample, collected here or posted, is one event with the same schema
(``host``, ``metric``, ``value``, ``unit``, ``labels``, ``timestamp``) on the infrastructure
topic, keyed by host so one host's samples stay in order.
"""

from __future__ import annotations

from typing import Any

import msgspec
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from quart_trio import QuartTrio

from app import events, otlp
from app.admission import Admission
from app.config import Settings
from app.http import openapi
from app.ids import new_uuids
from app.kafka.producer import Headers, Record
from app.observability.tracing import TraceContext
from app.shippers.ingest import EventKind, EventRoutes, Submitter, received_at
from app.shippers.otlp import OTLPRoute, Prepared, openapi_path

METRICS_ROUTE = "/api/v1/metrics"
METRICS_BATCH_ROUTE = "/api/v1/metrics/batch"
OTLP_METRICS_ROUTE = "/v1/metrics"

_encode = msgspec.json.Encoder().encode


def metric_records(samples: list[events.MetricIn], trace_headers: Headers) -> tuple[list[Record], list[str]]:
    """Kafka records for validated samples: key = host, value = the sample as JSON."""
    now = received_at()
    event_ids = new_uuids(len(samples))
    records: list[Record] = []
    append = records.append
    MetricRecord, encode = events.MetricRecord, _encode
    for sample, event_id in zip(samples, event_ids):
        value = encode(
            MetricRecord(
                event_id, now, sample.host, sample.metric, sample.value, sample.unit, sample.labels, sample.timestamp or now
            )
        )
        append(Record(sample.host.encode(), value, [("event-id", event_id.encode()), *trace_headers]))
    return records, event_ids


def _traced_metric_records(samples: list[events.MetricIn], trace: TraceContext) -> tuple[list[Record], list[str]]:
    return metric_records(samples, trace.kafka_headers())


def prepare_otlp_metrics(body: bytes, kind: str, max_events: int) -> Prepared:
    """An OTLP metrics export as samples: gauge and sum points; histogram and summary ones rejected."""
    mapped = otlp.metric_events(otlp.decode(body, kind, ExportMetricsServiceRequest()), max_events)
    return Prepared(
        len(mapped.samples),
        lambda trace: metric_records(mapped.samples, trace.kafka_headers())[0],
        otlp.metrics_response(mapped.rejected),
    )


ROUTES = [(METRICS_ROUTE, "POST"), (METRICS_BATCH_ROUTE, "POST"), (OTLP_METRICS_ROUTE, "POST")]


def openapi_paths() -> dict[str, Any]:
    return {
        **openapi.event_routes(METRICS_ROUTE, METRICS_BATCH_ROUTE, "host metric sample", "MetricIn", "MetricBatch"),
        OTLP_METRICS_ROUTE: openapi_path(
            "OTLP/HTTP metrics export (ExportMetricsServiceRequest); one event per gauge or sum data point",
            {"resourceMetrics": {"type": "array", "items": {"type": "object"}}},
            "rejectedDataPoints",
        ),
    }


METRICS = EventKind(
    "metric", events.decode_metric, events.decode_metric_batch, events.decode_metric_ndjson, _traced_metric_records
)


class InfrastructureShipper:
    """Routes of the infrastructure shipper, bound to its producer profile."""

    def __init__(self, settings: Settings, submitter: Submitter, admission: Admission) -> None:
        self.routes = EventRoutes(settings, METRICS, submitter, admission)
        self.otlp = OTLPRoute(settings, submitter, admission, prepare_otlp_metrics)

    def register(self, app: QuartTrio) -> None:
        self.routes.register(app, METRICS_ROUTE, METRICS_BATCH_ROUTE)
        app.add_url_rule(OTLP_METRICS_ROUTE, "post_otlp_metrics", self.otlp.post, methods=["POST"])
        openapi.add_paths(app, openapi_paths())
