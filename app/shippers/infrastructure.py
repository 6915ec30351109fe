"""The infrastructure shipper (8082): host metrics from this host's collector, from remote agents
and from OpenTelemetry SDKs and collectors (OTLP/HTTP), Prometheus (remote_write) and collectd
(write_http).

Every sample, collected here or posted, is one event with the same schema
(``host``, ``metric``, ``value``, ``unit``, ``labels``, ``timestamp``) on the infrastructure
topic, keyed by host so one host's samples stay in order.
"""

from __future__ import annotations

from app.config import Settings
from app.dialects import collectd, native, otlp, remote_write
from app.http.routes import Route
from app.streams import ChannelStream, ProfileSink, Spooler, channel_stream, metric_records

NAME = "infrastructure"

ROUTES = (
    Route("POST", "/api/v1/metrics", NAME, native.Single(native.METRICS)),
    Route("POST", "/api/v1/metrics/batch", NAME, native.Batch(native.METRICS)),
    Route("POST", "/v1/metrics", NAME, otlp.METRICS),
    Route("POST", "/api/v1/write", NAME, remote_write.REMOTE_WRITE),
    Route("POST", "/collectd", NAME, collectd.WRITE_HTTP),
)


def stream(settings: Settings, profile: ProfileSink, spool: Spooler | None = None) -> ChannelStream:
    return channel_stream(settings, profile, metric_records, spool)
