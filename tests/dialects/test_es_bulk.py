"""The Elasticsearch dialect without a socket: the _bulk decoder driven by hypothesis, the mapping
of documents onto log events, the item answers, the refusals and the handshake documents."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import events
from app.config import load_settings
from app.core import Refusal
from app.dialects import es_bulk, es_handshake
from app.dialects.base import Accepted, Decoded, Limits, Request
from app.streams import log_records

LIMITS = Limits(max_events=1000)


def request(path: str = "/_bulk", method: str = "POST", **params: str) -> Request:
    return Request(method, path, {}, params)


def ndjson(*lines: object) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def decode(body: bytes, **params: str) -> Decoded:
    return es_bulk.POST.decode(body, request(**params), LIMITS)


def one(document: dict[str, Any], index: str = "logs", **metadata: str) -> events.LogIn:
    decoded = decode(ndjson({"index": {"_index": index, **metadata}}, document))
    [event] = decoded.events
    assert isinstance(event, events.LogIn), event
    return event


def answer(decoded: Decoded, ids: list[str] | None = None) -> dict[str, Any]:
    ids = ids if ids is not None else [f"event-{i}" for i in range(len(decoded.events))]
    reply = es_bulk.POST.answer(decoded, Accepted(ids), request())
    assert reply.status == 200 and reply.headers["X-Elastic-Product"] == "Elasticsearch"
    document = json.loads(reply.body)
    assert isinstance(document, dict), document
    return document


# -- hypothesis: bytes in, never anything but Decoded or a refusal ----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["message", "log", "@message", "level", "log.level", "severity", "host", "host.name", "service.name",
     "service", "@timestamp", "_index", "x"]
)
documents = st.dictionaries(field_names, json_values | st.dictionaries(st.sampled_from(["name", "level", "y"]), json_values), max_size=6)
metadata = st.fixed_dictionaries(
    {}, optional={"_index": st.text(max_size=8) | st.integers(), "_id": st.text(max_size=8) | st.integers(), "_type": st.just("events")}
)
actions = st.tuples(st.sampled_from(["index", "create", "delete", "update", "upsert"]), metadata, documents | json_values)


def bulk_body(items: list[tuple[str, dict[str, Any], Any]]) -> bytes:
    lines: list[object] = []
    for action, meta, document in items:
        lines.append({action: meta})
        if action != "delete":
            lines.append(document)
    return ndjson(*lines)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), index=st.none() | st.text(min_size=1, max_size=300))
def test_any_bytes_are_decoded_or_refused(body: bytes, index: str | None) -> None:
    params = {"index": index} if index else {}
    try:
        decoded = decode(body, **params)
    except Refusal as refusal:
        assert refusal.status in (400, 413) and isinstance(refusal, es_bulk.ElasticError)
        assert es_bulk.POST.refuse(refusal, request()).headers["X-Elastic-Product"] == "Elasticsearch"
        return
    answer(decoded)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(actions, max_size=8), index=st.none() | st.text(min_size=1, max_size=20), cut=st.integers(0, 2000))
def test_bulk_requests_cut_anywhere_are_decoded_or_refused(items: list[Any], index: str | None, cut: int) -> None:
    body = bulk_body(items)
    for part in (body, body[:cut], body[cut:]):
        try:
            decoded = decode(part, **({"index": index} if index else {}))
        except Refusal as refusal:
            assert refusal.status == 400, refusal
            continue
        answer(decoded)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(actions, min_size=1, max_size=8), index=st.none() | st.text(min_size=1, max_size=20))
def test_every_action_has_its_item_in_order_and_every_event_is_valid(items: list[Any], index: str | None) -> None:
    try:
        decoded = decode(bulk_body(items), **({"index": index} if index else {}))
    except Refusal as refusal:
        # Only an unknown action or metadata of the wrong type refuses the whole request.
        assert refusal.status == 400
        assert any(action == "upsert" or not isinstance(meta.get("_index", ""), str) or isinstance(meta.get("_id"), bool)
                   for action, meta, _ in items), refusal
        return
    assert len(decoded.state.items) == len(items)
    # Every event is what the native routes would take, and becomes a Kafka record.
    for event in decoded.events:
        assert msgspec.convert(msgspec.to_builtins(event), events.LogIn) is not None
    records, ids = log_records(decoded.events, [])
    assert len(records) == len(decoded.events)
    reply = answer(decoded, ids)
    taken = [item for item in reply["items"] if next(iter(item.values()))["status"] == 201]
    assert len(taken) == len(decoded.events)
    assert reply["errors"] == (len(taken) < len(items))
    for (action, meta, document), item in zip(items, reply["items"]):
        [(answered, outcome)] = item.items()
        assert answered == action
        expected_index = meta.get("_index", index)
        served = action in ("index", "create") and isinstance(document, dict) and expected_index and len(expected_index) <= 255
        served = served and ("_id" not in meta or 0 < len(str(meta["_id"]).encode()) <= 512)
        assert outcome["status"] == (201 if served else 400), (action, meta, document, outcome)
        if not served:
            assert outcome["error"]["type"] and outcome["error"]["reason"]


# -- the mapping ----------------------------------------------------------------------------


def test_message_is_message_then_log_then_at_message_else_the_whole_document() -> None:
    assert one({"message": "m", "log": "l", "@message": "a"}).message == "m"
    assert one({"message": "", "log": "l", "@message": "a"}).message == "l"
    assert one({"log": {"level": "warn"}, "@message": "a"}).message == "a"
    event = one({"msg": "x", "n": 1})
    assert json.loads(event.message) == {"msg": "x", "n": 1}
    assert event.attributes == {"_index": "logs"}  # the document is the message


def test_level_from_level_log_level_or_severity_in_any_spelling() -> None:
    assert one({"message": "m", "level": "warning", "severity": "err"}).level == "WARN"
    assert one({"message": "m", "log.level": "Error"}).level == "ERROR"
    event = one({"message": "m", "log": {"level": "debug", "logger": "x"}})
    assert event.level == "DEBUG" and event.attributes == {"log": {"logger": "x"}, "_index": "logs"}
    assert one({"message": "m", "log": {"level": "trace"}}).attributes == {"_index": "logs"}
    for severity, level in [("emerg", "FATAL"), ("crit", "FATAL"), ("notice", "INFO"), ("informational", "INFO")]:
        assert one({"message": "m", "severity": severity}).level == level


def test_an_unknown_level_is_info_and_stays_in_the_attributes() -> None:
    event = one({"message": "m", "level": "LOUD", "severity": 3})
    assert event.level == "INFO"
    assert event.attributes == {"level": "LOUD", "severity": 3, "_index": "logs"}
    assert one({"message": "m", "level": "LOUD", "severity": "error"}).level == "ERROR"


def test_source_is_host_name_then_host_then_service_name_then_the_index() -> None:
    assert one({"message": "m", "host": {"name": "h1", "ip": "x"}, "service.name": "svc"}).source == "h1"
    assert one({"message": "m", "host.name": "h2", "host": "h3"}).source == "h2"
    assert one({"message": "m", "host": "h3", "service": {"name": "svc"}}).source == "h3"
    assert one({"message": "m", "host": {"ip": "x"}, "service": {"name": "svc"}}).source == "svc"
    event = one({"message": "m", "host": "h" * 256}, index="fallback")
    assert event.source == "fallback" and event.attributes == {"host": "h" * 256, "_index": "fallback"}


def test_timestamp_from_rfc3339_or_epoch_millis_else_kept() -> None:
    assert one({"message": "m", "@timestamp": "2026-10-11T22:14:15+02:00"}).timestamp == dt.datetime(
        2026, 10, 11, 20, 14, 15, tzinfo=dt.timezone.utc
    )
    assert one({"message": "m", "@timestamp": 1_700_000_000_123}).timestamp == dt.datetime(
        2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.timezone.utc
    )
    naive = one({"message": "m", "@timestamp": "2026-10-11T22:14:15"}).timestamp
    assert naive is not None and naive.tzinfo == dt.timezone.utc
    for unreadable in ["yesterday", 10**30, True]:
        event = one({"message": "m", "@timestamp": unreadable})
        assert event.timestamp is None and event.attributes == {"@timestamp": unreadable, "_index": "logs"}


def test_the_index_and_the_clients_id_go_into_the_attributes() -> None:
    decoded = decode(ndjson({"index": {"_id": "doc-1"}}, {"message": "m", "k": [1]}), index="app")
    [event] = decoded.events
    assert event.source == "app" and event.attributes == {"k": [1], "_index": "app", "_id": "doc-1"}
    # The action's _index wins over the path's.
    assert one({"message": "m"}, index="own").attributes == {"_index": "own"}


# -- answers and refusals ---------------------------------------------------------------------


def test_items_answer_in_request_order_with_the_clients_id_or_the_event_id() -> None:
    body = ndjson(
        {"index": {"_index": "a"}}, {"message": "1"},
        {"delete": {"_index": "a", "_id": "gone"}},
        {"create": {"_index": "a", "_id": "mine"}}, {"message": "2"},
        {"update": {"_index": "a", "_id": "u"}}, {"doc": {"message": "3"}},
        {"index": {}}, {"message": "no index"},
        {"index": {"_index": "a"}}, [1, 2],
    )
    decoded = decode(body)
    assert [e.message for e in decoded.events] == ["1", "2"]
    reply = answer(decoded, ["e1", "e2"])
    assert reply["errors"] is True and isinstance(reply["took"], int)
    kinds = [(action, item["status"], item.get("_id"), item.get("error", {}).get("type")) for entry in reply["items"] for action, item in entry.items()]
    assert kinds == [
        ("index", 201, "e1", None),
        ("delete", 400, "gone", "illegal_argument_exception"),
        ("create", 201, "mine", None),
        ("update", 400, "u", "illegal_argument_exception"),
        ("index", 400, None, "action_request_validation_exception"),
        ("index", 400, None, "document_parsing_exception"),
    ]
    created = reply["items"][0]["index"]
    assert created["result"] == "created" and created["_version"] == 1 and created["_primary_term"] == 1
    assert created["_shards"] == {"total": 1, "successful": 1, "failed": 0} and created["_index"] == "a"


def test_a_request_of_good_items_has_no_errors() -> None:
    reply = answer(decode(ndjson({"index": {}}, {"message": "x"}, {"create": {}}, {"message": "y"}), index="i"))
    assert reply["errors"] is False and [item[k]["_seq_no"] for item in reply["items"] for k in item] == [0, 1]


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"", "action_request_validation_exception"),
        (b"\n \n", "action_request_validation_exception"),
        (b'{"index": {}\n{"message": "m"}\n', "x_content_parse_exception"),
        (b'{"index": {}}\n{"message": "m"\n', "x_content_parse_exception"),
        (b'{"index": {}, "create": {}}\n{}\n', "illegal_argument_exception"),
        (b'{"upsert": {}}\n{}\n', "illegal_argument_exception"),
        (b'{"index": []}\n{}\n', "illegal_argument_exception"),
        (b'"index"\n{}\n', "illegal_argument_exception"),
        (b'{"index": {}}\n', "illegal_argument_exception"),
        (b'{"index": {"_id": true}}\n{}\n', "illegal_argument_exception"),
        (b'{"index": {}}\n' + b"[" * 100_000 + b"\n", "x_content_parse_exception"),
    ],
)
def test_a_malformed_line_refuses_the_whole_request(body: bytes, kind: str) -> None:
    with pytest.raises(es_bulk.ElasticError) as refused:
        decode(body, index="i")
    assert refused.value.status == 400 and refused.value.error == kind
    reply = es_bulk.POST.refuse(refused.value, request())
    document = json.loads(reply.body)
    assert reply.status == 400 and reply.headers["X-Elastic-Product"] == "Elasticsearch"
    assert document["status"] == 400 and document["error"]["type"] == kind
    assert document["error"]["root_cause"] == [{"type": kind, "reason": document["error"]["reason"]}]


def test_more_actions_than_the_limit_is_a_413() -> None:
    body = ndjson(*[{"index": {}}, {"message": "m"}] * 4)
    assert len(es_bulk.POST.decode(body, request(index="i"), Limits(4)).events) == 4
    with pytest.raises(es_bulk.ElasticError) as refused:
        es_bulk.POST.decode(body, request(index="i"), Limits(3))
    assert refused.value.status == 413


BAD = "@@"


def bad_variants(document: object) -> list[object]:
    """``document`` once per string in it (keys and values), that string replaced by BAD."""
    if isinstance(document, str):
        return [BAD]
    if isinstance(document, dict):
        found: list[object] = []
        for key, value in document.items():
            found.append({(BAD if k == key else k): v for k, v in document.items()})
            found += [{**document, key: bad} for bad in bad_variants(value)]
        return found
    return []


def test_invalid_utf8_in_any_field_of_any_line_is_a_400() -> None:
    lines: list[object] = [
        {"index": {"_index": "i", "_id": "x"}},
        {"message": "m", "level": "INFO", "host": {"name": "h"}, "@timestamp": "2026-01-01T00:00:00Z", "k": "v"},
    ]
    cases = 0
    for position, line in enumerate(lines):
        for bad in bad_variants(line):
            body = ndjson(*lines[:position], bad, *lines[position + 1 :]).replace(BAD.encode(), b"\xff\xfe")
            with pytest.raises(es_bulk.ElasticError) as refused:
                decode(body)
            assert refused.value.status == 400 and refused.value.error == "x_content_parse_exception"
            cases += 1
    assert cases > 10


def test_refusals_keep_their_headers_and_name_elasticsearchs_error_types() -> None:
    for status, kind in [(429, "es_rejected_execution_exception"), (503, "unavailable_shards_exception"), (401, "security_exception")]:
        reply = es_bulk.POST.refuse(Refusal(status, "why", "detail", headers={"Retry-After": "3"}), request())
        document = json.loads(reply.body)
        assert reply.status == status and document["status"] == status and document["error"]["type"] == kind
        assert reply.headers == {"Retry-After": "3", "X-Elastic-Product": "Elasticsearch"}
    head = es_bulk.POST.refuse(Refusal(401, "unauthorized"), request("/_template/x", "HEAD"))
    assert head.status == 401 and head.body == b"" and head.headers["X-Elastic-Product"] == "Elasticsearch"


def test_api_keys_come_as_apikey_bearer_or_basic_password() -> None:
    def authorization(value: str | None) -> str | None:
        headers = {} if value is None else {"authorization": value}
        return es_bulk.POST.authorization(Request("POST", "/_bulk", headers))

    assert authorization(None) is None
    assert authorization("ApiKey k1") == "Bearer k1"
    assert authorization("Bearer k2") == "Bearer k2"
    assert authorization("Basic " + base64.b64encode(b"rsyslog:k3").decode()) == "Bearer k3"
    assert authorization("Basic !!!") == "Basic !!!"  # not base64: refused as it is


# -- the handshake ----------------------------------------------------------------------------


def handshake(dialect: es_handshake.Handshake, path: str, method: str = "GET", query: bytes = b"", **params: str) -> Any:
    req = Request(method, path, {"host": "127.0.0.1:9200"}, params, query)
    assert dialect.decode(b'{"index_patterns": ["x"]}', req, LIMITS).events == []
    reply = dialect.answer(Decoded([]), Accepted([]), req)
    assert reply.status == 200 and reply.headers == {"X-Elastic-Product": "Elasticsearch"}
    if method == "HEAD":
        assert reply.body == b""
        return None
    return reply.body if reply.content_type.startswith("text/") else json.loads(reply.body)


def test_the_version_document_reports_the_configured_version() -> None:
    document = handshake(es_handshake.ROOT, "/")
    assert document["version"]["number"] == es_handshake.DEFAULT_VERSION and document["tagline"] == "You Know, for Search"
    configured = es_handshake.ROOT.configured(load_settings({"ES_COMPAT_VERSION": "7.17.9"}))
    document = handshake(configured, "/")
    assert document["version"] == {
        "number": "7.17.9", "build_flavor": "default", "build_type": "tar", "build_snapshot": False,
        "lucene_version": "8.11.1", "minimum_wire_compatibility_version": "6.8.0",
        "minimum_index_compatibility_version": "6.0.0-beta1",
    }
    assert {"name", "cluster_name", "cluster_uuid"} <= set(document)
    handshake(es_handshake.ROOT_EXISTS, "/", "HEAD")


def test_es_compat_version_must_be_a_version() -> None:
    with pytest.raises(ValueError, match="ES_COMPAT_VERSION"):
        load_settings({"ES_COMPAT_VERSION": "latest"})


def test_the_other_handshake_documents() -> None:
    assert handshake(es_handshake.LICENSE, "/_license")["license"]["status"] == "active"
    assert handshake(es_handshake.CLUSTER_HEALTH, "/_cluster/health")["status"] == "green"
    text = handshake(es_handshake.CAT_HEALTH, "/_cat/health")
    assert text.decode().split()[2:4] == ["kafka-log-gateway", "green"]
    assert handshake(es_handshake.CAT_HEALTH, "/_cat/health", query=b"v").decode().startswith("epoch timestamp cluster")
    assert handshake(es_handshake.CAT_HEALTH, "/_cat/health", query=b"format=json")[0]["status"] == "green"
    nodes = handshake(es_handshake.NODES_HTTP, "/_nodes/http")
    [node] = nodes["nodes"].values()
    assert node["http"]["publish_address"] == "127.0.0.1:9200"
    assert handshake(es_handshake.TEMPLATE, "/_template/t", name="t") == {
        "t": {"order": 0, "index_patterns": ["t*"], "settings": {}, "mappings": {}, "aliases": {}}
    }
    assert handshake(es_handshake.INDEX_TEMPLATE, "/_index_template/t", name="t")["index_templates"][0]["name"] == "t"
    assert handshake(es_handshake.PUT_TEMPLATE, "/_template/t", "PUT", name="t") == {"acknowledged": True}
    assert handshake(es_handshake.PUT_INDEX_TEMPLATE, "/_index_template/t", "PUT", name="t") == {"acknowledged": True}
    handshake(es_handshake.TEMPLATE_EXISTS, "/_template/t", "HEAD", name="t")
    handshake(es_handshake.INDEX_TEMPLATE_EXISTS, "/_index_template/t", "HEAD", name="t")


def test_every_route_documents_its_own_method_and_path_parameters() -> None:
    from app.shippers.application import ROUTES

    for route in ROUTES:
        if isinstance(route.dialect, (es_bulk.BulkDialect, es_handshake.Handshake)):
            [(method, operation)] = route.operation().items()
            assert method == route.method.lower(), route
            assert [p["name"] for p in operation.get("parameters", [])] == route.parameters, route
