"""The application-log shipper (8081): application logs on the application profile.

Its routes, one per dialect: the native single and batch routes, OTLP/HTTP logs, Python's
``logging.handlers.HTTPHandler``, Splunk HEC, Loki push and Elasticsearch ``_bulk`` (with the handshake its
clients make first). Every one of them feeds the same stream.
"""

from __future__ import annotations

from app.config import Settings
from app.dialects import es_bulk, es_handshake, hec, httphandler, loki, native, otlp
from app.http.routes import Route
from app.streams import ChannelStream, ProfileSink, Spooler, channel_stream, log_records

NAME = "application"

# Splunk HEC's routes share the indexer acknowledgements of this process.
_HEC = hec.endpoints()

ROUTES = (
    Route("POST", "/api/v1/logs", NAME, native.Single(native.LOGS)),
    Route("POST", "/api/v1/logs/batch", NAME, native.Batch(native.LOGS)),
    Route("POST", "/v1/logs", NAME, otlp.LOGS),
    Route("POST", "/api/v1/logs/python", NAME, httphandler.FORM_LOGS),
    Route("POST", "/services/collector", NAME, _HEC.events),
    Route("POST", "/services/collector/event", NAME, _HEC.events),
    Route("POST", "/services/collector/event/1.0", NAME, _HEC.events),
    Route("POST", "/services/collector/raw", NAME, _HEC.raw),
    Route("POST", "/services/collector/raw/1.0", NAME, _HEC.raw),
    Route("POST", "/services/collector/ack", NAME, _HEC.ack),
    Route("GET", "/services/collector/health", NAME, _HEC.health),
    Route("GET", "/services/collector/health/1.0", NAME, _HEC.health),
    Route("POST", "/loki/api/v1/push", NAME, loki.PUSH),
    # Elasticsearch: the handshake first (its template paths before /{index}/_bulk), then _bulk.
    # GET / stays off the gateway, whose / is the status page.
    Route("GET", "/", NAME, es_handshake.ROOT, gateway=False),
    Route("HEAD", "/", NAME, es_handshake.ROOT_EXISTS, gateway=False),
    Route("GET", "/_license", NAME, es_handshake.LICENSE),
    Route("GET", "/_cluster/health", NAME, es_handshake.CLUSTER_HEALTH),
    Route("GET", "/_cat/health", NAME, es_handshake.CAT_HEALTH),
    Route("GET", "/_nodes/http", NAME, es_handshake.NODES_HTTP),
    Route("HEAD", "/_template/{name}", NAME, es_handshake.TEMPLATE_EXISTS),
    Route("GET", "/_template/{name}", NAME, es_handshake.TEMPLATE),
    Route("PUT", "/_template/{name}", NAME, es_handshake.PUT_TEMPLATE),
    Route("HEAD", "/_index_template/{name}", NAME, es_handshake.INDEX_TEMPLATE_EXISTS),
    Route("GET", "/_index_template/{name}", NAME, es_handshake.INDEX_TEMPLATE),
    Route("PUT", "/_index_template/{name}", NAME, es_handshake.PUT_INDEX_TEMPLATE),
    Route("POST", "/_bulk", NAME, es_bulk.POST),
    Route("PUT", "/_bulk", NAME, es_bulk.PUT),
    Route("POST", "/{index}/_bulk", NAME, es_bulk.INDEX_POST),
    Route("PUT", "/{index}/_bulk", NAME, es_bulk.INDEX_PUT),
)


def stream(settings: Settings, profile: ProfileSink, spool: Spooler | None = None) -> ChannelStream:
    return channel_stream(settings, profile, log_records, spool)

