"""What Elasticsearch clients ask before they send: answered harmlessly, in Elasticsearch's shape.

The version document (``GET /``: its ``version.number`` is ``ES_COMPAT_VERSION``), the license,
the cluster's health (``/_cluster/health`` and rsyslog's ``/_cat/health`` probe), the HTTP
address of the one node (the address the client reached, so a sniffing client stays on it), and
index templates, which always exist and are acknowledged when put, and are then ignored: the
gateway keeps no index. None of these takes events; every answer carries ``X-Elastic-Product``.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from app.config import Settings
from app.dialects.base import JSON, NDJSON, Accepted, Answer, Decoded, Limits, Request
from app.dialects.es_bulk import VND_JSON, ElasticDialect, elastic_answer, path_parameters, refusal_responses

CLUSTER_NAME: Final = "kafka-log-gateway"
CLUSTER_UUID: Final = "a2Fma2EtbG9nLWdhdGV3YXk"  # fixed: one gateway cluster, whatever its instances
NODE_ID: Final = "gateway-node-0000000000"
DEFAULT_VERSION: Final = "8.17.0"
VERSION: Final = re.compile(r"^([0-9]{1,3})\.[0-9]{1,3}\.[0-9]{1,3}$")

# Per major version: the Lucene version and the oldest wire and index versions Elasticsearch reports.
_RELEASES: Final = {
    6: ("7.7.3", "5.6.0", "5.0.0"),
    7: ("8.11.1", "6.8.0", "6.0.0-beta1"),
    8: ("9.12.0", "7.17.0", "7.0.0"),
    9: ("10.2.2", "8.19.0", "8.0.0"),
}


@dataclass(frozen=True, slots=True)
class Cluster:
    """What the handshake answers tell of the gateway, from its settings."""

    version: str = DEFAULT_VERSION
    max_content_length: int = 10 * 1024 * 1024

    @classmethod
    def of(cls, settings: Settings) -> Cluster:
        return cls(settings.es_compat_version, settings.max_request_bytes)


def version_document(cluster: Cluster) -> dict[str, Any]:
    """``GET /``: what clients read the server's version and product from."""
    found = VERSION.match(cluster.version)
    major = int(found.group(1)) if found else 8
    lucene, wire, index = _RELEASES.get(major, (_RELEASES[9][0], f"{major - 1}.0.0", f"{major - 1}.0.0"))
    return {
        "name": NODE_ID,
        "cluster_name": CLUSTER_NAME,
        "cluster_uuid": CLUSTER_UUID,
        "version": {
            "number": cluster.version,
            "build_flavor": "default",
            "build_type": "tar",
            "build_snapshot": False,
            "lucene_version": lucene,
            "minimum_wire_compatibility_version": wire,
            "minimum_index_compatibility_version": index,
        },
        "tagline": "You Know, for Search",
    }


Reply = tuple[int, Any, str]  # status, document (or text), content type
Document = Callable[[Cluster, Request], Reply]


def _root(cluster: Cluster, request: Request) -> Reply:
    return 200, version_document(cluster), JSON


def _license(cluster: Cluster, request: Request) -> Reply:
    license_ = {
        "status": "active", "uid": CLUSTER_UUID, "type": "basic", "issue_date": "1970-01-01T00:00:00.000Z",
        "issue_date_in_millis": 0, "max_nodes": 1000, "max_resource_units": None, "issued_to": CLUSTER_NAME,
        "issuer": "elasticsearch", "start_date_in_millis": -1,
    }
    return 200, {"license": license_}, JSON


_HEALTH: Final = {
    "cluster_name": CLUSTER_NAME, "status": "green", "timed_out": False, "number_of_nodes": 1,
    "number_of_data_nodes": 1, "active_primary_shards": 0, "active_shards": 0, "relocating_shards": 0,
    "initializing_shards": 0, "unassigned_shards": 0, "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0,
    "number_of_in_flight_fetch": 0, "task_max_waiting_in_queue_millis": 0, "active_shards_percent_as_number": 100.0,
}


def _cluster_health(cluster: Cluster, request: Request) -> Reply:
    return 200, _HEALTH, JSON


_CAT_COLUMNS: Final = (
    "epoch", "timestamp", "cluster", "status", "node.total", "node.data", "shards", "pri", "relo", "init",
    "unassign", "pending_tasks", "max_task_wait_time", "active_shards_percent",
)


def _cat_health(cluster: Cluster, request: Request) -> Reply:
    now = dt.datetime.now(dt.timezone.utc)
    values = (
        str(int(now.timestamp())), now.strftime("%H:%M:%S"), CLUSTER_NAME, "green", "1", "1", "0", "0", "0", "0",
        "0", "0", "-", "100.0%",
    )
    query = urllib.parse.parse_qs(request.query.decode("latin-1"), keep_blank_values=True)
    if query.get("format") == ["json"]:
        return 200, [dict(zip(_CAT_COLUMNS, values))], JSON
    rows = [_CAT_COLUMNS, values] if "v" in query else [values]
    return 200, "".join(" ".join(row) + "\n" for row in rows).encode(), "text/plain; charset=UTF-8"


def _nodes_http(cluster: Cluster, request: Request) -> Reply:
    address = request.headers.get("host") or "127.0.0.1:9200"
    node = {
        "name": NODE_ID, "transport_address": address, "host": address.rsplit(":", 1)[0], "ip": address.rsplit(":", 1)[0],
        "version": cluster.version, "roles": ["data", "ingest", "master"],
        "http": {
            "bound_address": [address], "publish_address": address,
            "max_content_length_in_bytes": cluster.max_content_length,
        },
    }
    nodes = {"_nodes": {"total": 1, "successful": 1, "failed": 0}, "cluster_name": CLUSTER_NAME, "nodes": {NODE_ID: node}}
    return 200, nodes, JSON


def _template_exists(cluster: Cluster, request: Request) -> Reply:
    return 200, b"", JSON


def _legacy_template(cluster: Cluster, request: Request) -> Reply:
    name = request.params.get("name", "")
    template = {"order": 0, "index_patterns": [f"{name}*"], "settings": {}, "mappings": {}, "aliases": {}}
    return 200, {name: template}, JSON


def _index_template(cluster: Cluster, request: Request) -> Reply:
    name = request.params.get("name", "")
    template = {"index_patterns": [f"{name}*"], "composed_of": [], "template": {}}
    return 200, {"index_templates": [{"name": name, "index_template": template}]}, JSON


def _acknowledged(cluster: Cluster, request: Request) -> Reply:
    return 200, {"acknowledged": True}, JSON


class Handshake(ElasticDialect):
    """One handshake route: its document, from the cluster the settings describe. Takes no events."""

    name = "elasticsearch"
    # Clients send a JSON Content-Type with or without a body (rsyslog's probe does); a PUT's body is ignored.
    media_types = frozenset({"", JSON, VND_JSON, NDJSON})

    def __init__(
        self, method: str, summary: str, document: Document, cluster: Cluster = Cluster(), *, templated: bool = False
    ) -> None:
        self._method = method
        self._summary = summary
        self._document = document
        self._cluster = cluster
        self._templated = templated  # its path has a {name}

    def configured(self, settings: Settings) -> Handshake:
        """This route as the gateway with ``settings`` answers it (its version, its body limit)."""
        return Handshake(self._method, self._summary, self._document, Cluster.of(settings), templated=self._templated)

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        return Decoded([])

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        status, document, content_type = self._document(self._cluster, request)
        return elastic_answer(request, status, document, content_type)

    def operation(self) -> dict[str, Any]:
        if self._method == "HEAD":
            ok: dict[str, Any] = {"description": "exists"}
        else:
            ok = {"description": "the Elasticsearch document", "content": {JSON: {"schema": {"type": ["object", "array"]}}}}
            if self._document is _cat_health:
                ok["content"]["text/plain"] = {"schema": {"type": "string"}}
        refusals = {
            "401": "no valid API key (when keys are configured)", "415": "unsupported Content-Type",
            "500": "an unexpected error",
        }
        operation: dict[str, Any] = {"summary": self._summary, "responses": {"200": ok, **refusal_responses(refusals)}}
        if self._templated:
            operation["parameters"] = path_parameters("name")
        if self._method == "PUT":
            operation["requestBody"] = {"required": False, "content": {JSON: {"schema": {"type": "object"}}}}
        return {self._method.lower(): operation}


ROOT = Handshake("GET", "Elasticsearch version document (ES_COMPAT_VERSION)", _root)
ROOT_EXISTS = Handshake("HEAD", "Elasticsearch ping", _root)
LICENSE = Handshake("GET", "Elasticsearch license: basic, active", _license)
CLUSTER_HEALTH = Handshake("GET", "Elasticsearch cluster health: green", _cluster_health)
CAT_HEALTH = Handshake("GET", "Elasticsearch _cat health (rsyslog's connection probe)", _cat_health)
NODES_HTTP = Handshake("GET", "the one node's HTTP address: the address the client reached", _nodes_http)
TEMPLATE_EXISTS = Handshake("HEAD", "a legacy index template exists (ignored)", _template_exists, templated=True)
TEMPLATE = Handshake("GET", "a legacy index template (templates are ignored)", _legacy_template, templated=True)
PUT_TEMPLATE = Handshake("PUT", "put a legacy index template: acknowledged and ignored", _acknowledged, templated=True)
INDEX_TEMPLATE_EXISTS = Handshake("HEAD", "an index template exists (ignored)", _template_exists, templated=True)
INDEX_TEMPLATE = Handshake("GET", "an index template (templates are ignored)", _index_template, templated=True)
PUT_INDEX_TEMPLATE = Handshake("PUT", "put an index template: acknowledged and ignored", _acknowledged, templated=True)
