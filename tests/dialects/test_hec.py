"""Splunk HEC's dialect without a socket: the event and raw decoders driven by hypothesis, the
answers and refusals in HEC's terms, and the indexer acknowledgement registry."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import events
from app.core import Acknowledgement, Refusal
from app.dialects import hec
from app.dialects.base import Accepted, Limits, Request

LIMITS = Limits(max_events=1_000, max_decompressed_bytes=1 << 20)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
index_names = st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,10}", fullmatch=True)
hec_events = st.fixed_dictionaries(
    {"event": st.one_of(st.text(min_size=1, max_size=20), st.dictionaries(st.text(max_size=8), json_values, max_size=4), st.integers())},
    optional={
        "time": st.one_of(st.floats(0, 4e9), st.integers(0, 4_000_000_000), st.floats(0, 4e9).map(repr)),
        "host": st.text(max_size=10),
        "source": st.text(max_size=300),
        "sourcetype": st.text(max_size=10),
        "index": index_names,
        "fields": st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.lists(st.text(max_size=5), max_size=3)), max_size=3),
    },
)
separators = st.sampled_from(["", "", " ", "\n", "\r\n", "\t \n "])


def concatenated(documents: list[dict[str, Any]], seps: list[str]) -> bytes:
    return "".join(json.dumps(document) + sep for document, sep in zip(documents, seps)).encode()


def expected_message(event: Any) -> str:
    if isinstance(event, str):
        return event
    if isinstance(event, dict):
        for name in ("message", "log", "msg"):
            if isinstance(event.get(name), str) and event[name]:
                return str(event[name])
    return msgspec.json.encode(event).decode()


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_bytes_are_events_or_a_hec_error(body: bytes) -> None:
    try:
        logs = hec.decode_events(body, 100)
    except hec.HecError as error:
        assert error.code in (5, 6, 7, 12, 13) and error.status in (400, 413)
        return
    assert logs and all(isinstance(log, events.LogIn) and log.message for log in logs)


@settings(max_examples=300, deadline=None)
@given(documents=st.lists(hec_events, min_size=1, max_size=6), data=st.data())
def test_concatenated_event_objects_become_one_event_each(documents: list[dict[str, Any]], data: st.DataObject) -> None:
    seps = data.draw(st.lists(separators, min_size=len(documents), max_size=len(documents)))
    logs = hec.decode_events(concatenated(documents, seps), 100)
    assert len(logs) == len(documents)
    for log, document in zip(logs, documents):
        assert log.message == expected_message(document["event"])
        assert log.source == (document.get("source") or document.get("host") or document.get("sourcetype") or "splunk-hec")[:255]
        assert log.level in events.LEVELS
        if "time" in document:
            assert log.timestamp is not None
            assert abs(log.timestamp.timestamp() - float(document["time"])) < 1e-3
        else:
            assert log.timestamp is None
        attributes = log.attributes or {}
        for name in ("host", "source", "sourcetype", "index"):
            assert attributes.get(name) == (document.get(name) or None)
        assert attributes.get("fields") == (document.get("fields") or None)


@settings(max_examples=100, deadline=None)
@given(documents=st.lists(hec_events, min_size=1, max_size=4), data=st.data())
def test_a_body_cut_anywhere_is_its_whole_objects_or_code_6_at_the_cut_one(documents: list[dict[str, Any]], data: st.DataObject) -> None:
    seps = data.draw(st.lists(separators, min_size=len(documents), max_size=len(documents)))
    body = concatenated(documents, seps)
    # Where each object ends: a cut there (or in the whitespace after) keeps exactly the objects before.
    ends = [len(concatenated(documents[: i + 1], seps[: i + 1])) - len(seps[i].encode()) for i in range(len(documents))]
    for offset in range(len(body)):
        try:
            logs = hec.decode_events(body[:offset], 100)
        except hec.HecError as error:
            complete = sum(1 for end in ends if end <= offset)
            if error.code == 5:
                assert not body[:offset].strip()
            else:
                assert error.code == 6 and error.event == complete, (offset, error.event, complete)
            continue
        assert len(logs) == sum(1 for end in ends if end <= offset)


def test_the_event_field_is_required_and_cannot_be_blank_and_the_answer_names_the_event() -> None:
    endpoints = hec.endpoints()
    request = Request("POST", "/services/collector", {})
    for body, status, payload in [
        (b'{"event":"a"}{"host":"h"}', 400, {"text": "Event field is required", "code": 12, "invalid-event-number": 1}),
        (b'{"event":"a"}{"event":""}', 400, {"text": "Event field cannot be blank", "code": 13, "invalid-event-number": 1}),
        (b'{"event":null}', 400, {"text": "Event field cannot be blank", "code": 13, "invalid-event-number": 0}),
        (b'{"event":"a"} {"event":', 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 1}),
        (b'{"event":"a","time":"soon"}', 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
        (b'{"event":"a","host":5}', 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
        (b'["a"]', 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
        (b'{"event":"a","index":"Main"}', 400, {"text": "Incorrect index", "code": 7, "invalid-event-number": 0}),
        (b" \n ", 400, {"text": "No data", "code": 5}),
        (b'{"event":"\xff"}', 400, {"text": "Invalid data format", "code": 6}),
        (b'{"\xff":1,"event":"a"}', 400, {"text": "Invalid data format", "code": 6}),
        (b'{"event":' + b"[" * 100_000, 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
    ]:
        with pytest.raises(Refusal) as refused:
            endpoints.events.decode(body, request, LIMITS)
        answer = endpoints.events.refuse(refused.value, request)
        assert (answer.status, json.loads(answer.body)) == (status, payload), body[:40]
    with pytest.raises(Refusal) as refused:
        endpoints.events.decode(b'{"event":"a"}' * 11, request, Limits(max_events=10))
    assert endpoints.events.refuse(refused.value, request).status == 413


def test_levels_messages_and_metadata() -> None:
    body = (
        b'{"event":{"message":"paid","level":"warning","user":"u1"},"host":"web-1","sourcetype":"_json",'
        b'"index":"main","time":1764064800.25,"fields":{"region":"eu"}}'
        b'{"event":{"msg":"m"},"fields":{"severity":"critical"},"sourcetype":"st"}'
        b'{"event":{"n":1}}{"event":"plain","fields":{"level":"debug"}}'
    )
    logs = hec.decode_events(body, 10)
    assert [(log.source, log.level, log.message) for log in logs] == [
        ("web-1", "WARN", "paid"), ("st", "FATAL", "m"), ("splunk-hec", "INFO", '{"n":1}'), ("splunk-hec", "DEBUG", "plain"),
    ]
    assert logs[0].attributes == {
        "host": "web-1", "sourcetype": "_json", "index": "main", "fields": {"region": "eu"}, "event": {"level": "warning", "user": "u1"},
    }
    assert logs[0].timestamp is not None and logs[0].timestamp.isoformat() == "2025-11-25T10:00:00.250000+00:00"


lines = st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20), max_size=8)
line_breaks = st.sampled_from(["\n", "\r\n", "\r", "\n\n"])


@settings(max_examples=300, deadline=None)
@given(parts=lines, data=st.data())
def test_raw_bodies_are_one_event_per_non_blank_line(parts: list[str], data: st.DataObject) -> None:
    text = "".join(part + data.draw(line_breaks) for part in parts)
    expected = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    query = {"host": "h", "sourcetype": "st", "index": "main"}
    try:
        logs = hec.decode_raw(text.encode(), query, 100)
    except hec.HecError as error:
        assert error.code == 5 and not expected
        return
    assert [log.message for log in logs] == expected
    assert all(log.source == "h" and log.level == "INFO" and log.attributes == query for log in logs)


def test_raw_metadata_and_channel_come_from_the_query_string() -> None:
    endpoints = hec.endpoints()
    request = Request("POST", "/services/collector/raw", {}, query=b"channel=c-1&source=billing&host=web&index=main")
    decoded = endpoints.raw.decode(b"one\ntwo\n", request, LIMITS)
    assert decoded.acknowledge and [log.source for log in decoded.events] == ["billing", "billing"]
    assert decoded.events[0].attributes == {"host": "web", "source": "billing", "index": "main"}
    for query in (b"source=%FF", b"source=\xff", b"index=_internal"):
        with pytest.raises(hec.HecError) as refused:
            endpoints.raw.decode(b"line", Request("POST", "/", {}, query=query), LIMITS)
        assert refused.value.code in (6, 7)
    with pytest.raises(hec.HecError) as refused:
        endpoints.raw.decode(b"\xff\xfe", request, LIMITS)
    assert refused.value.code == 6
    with pytest.raises(hec.HecError) as refused:
        endpoints.raw.decode(b"a\n" * 11, request, Limits(max_events=10))
    assert refused.value.status == 413


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Splunk abc", "Bearer abc"),
        ("splunk  abc ", "Bearer abc"),
        ("Bearer abc", "Bearer abc"),
        ("Basic " + base64.b64encode(b"x:abc").decode(), "Bearer abc"),
        ("Basic !!", "Basic !!"),
        ("Splunk", "Splunk"),
        ("Token abc", "Token abc"),
    ],
)
def test_credentials_are_the_token_as_a_bearer_key(header: str | None, expected: str | None) -> None:
    headers = {} if header is None else {"authorization": header}
    assert hec.authorization(Request("POST", "/services/collector", headers)) == expected


@pytest.mark.parametrize(
    ("refusal", "headers", "status", "payload"),
    [
        (Refusal(401, "unauthorized"), {}, 401, {"text": "Token is required", "code": 2}),
        (Refusal(401, "unauthorized"), {"authorization": "Token x"}, 401, {"text": "Invalid authorization", "code": 3}),
        (Refusal(401, "unauthorized"), {"authorization": "Splunk x"}, 403, {"text": "Invalid token", "code": 4}),
        (Refusal(429, "rate limited", headers={"Retry-After": "3"}), {}, 503, {"text": "Server is busy", "code": 9}),
        (Refusal(503, "buffer full", headers={"Retry-After": "1"}), {}, 503, {"text": "Server is busy", "code": 9}),
        (Refusal(503, "kafka unavailable", headers={"Retry-After": "7"}), {}, 503, {"text": "Server is busy", "code": 9}),
        (Refusal(413, "payload too large"), {}, 413, {"text": "Request entity too large", "code": 6}),
        (Refusal(413, "event too large", [{"index": 0}]), {}, 413, {"text": "Request entity too large", "code": 6}),
        (Refusal(400, "malformed gzip body"), {}, 400, {"text": "Invalid data format", "code": 6}),
        (Refusal(415, "unsupported media type"), {}, 415, {"text": "Invalid data format", "code": 6}),
        (Refusal(500, "internal error"), {}, 500, {"text": "Internal server error", "code": 8}),
    ],
)
def test_every_refusal_is_answered_in_hec_terms(
    refusal: Refusal, headers: dict[str, str], status: int, payload: dict[str, Any]
) -> None:
    answer = hec.endpoints().events.refuse(refusal, Request("POST", "/services/collector", headers))
    assert (answer.status, json.loads(answer.body), answer.content_type) == (status, payload, "application/json")
    if "Retry-After" in refusal.headers:
        assert answer.headers["Retry-After"] == refusal.headers["Retry-After"]


def test_health() -> None:
    endpoints = hec.endpoints()
    request = Request("GET", "/services/collector/health", {})
    decoded = endpoints.health.decode(b"", request, LIMITS)
    answer = endpoints.health.answer(decoded, Accepted([]), request)
    assert (answer.status, json.loads(answer.body)) == (200, {"text": "HEC is healthy", "code": 17})


def _delivered(acknowledgement: Acknowledgement) -> None:
    acknowledgement.delivered_to(False)


def test_an_ack_id_is_true_once_kafka_has_every_record_and_then_forgotten() -> None:
    endpoints = hec.endpoints()
    headers = {"x-splunk-request-channel": "2d0d8c0e-0000-4000-8000-000000000001"}
    request = Request("POST", "/services/collector/event", headers)
    decoded = endpoints.events.decode(b'{"event":"a"}{"event":"b"}', request, LIMITS)
    assert decoded.acknowledge
    acks = [Acknowledgement(2), Acknowledgement(1), Acknowledgement(1)]
    answers = [json.loads(endpoints.events.answer(decoded, Accepted(["1", "2"], acknowledgement=a), request).body) for a in acks]
    ids = [answer["ackId"] for answer in answers]
    assert answers[0]["text"] == "Success" and answers[0]["code"] == 0 and ids == sorted(ids) and len(set(ids)) == 3

    def query(ack_ids: list[int]) -> dict[str, bool]:
        ack_request = Request("POST", "/services/collector/ack", headers)
        body = json.dumps({"acks": ack_ids}).encode()
        answer = endpoints.ack.answer(endpoints.ack.decode(body, ack_request, LIMITS), Accepted([]), ack_request)
        assert answer.status == 200
        acks = json.loads(answer.body)["acks"]
        assert isinstance(acks, dict), acks
        return acks

    assert query(ids + [999]) == {str(i): False for i in ids + [999]}
    acks[0].delivered_to(False)  # one of two records: not yet
    acks[1].delivered_to(True)  # dead-lettered: never
    acks[2].lose()  # lost: never
    assert query(ids) == {str(i): False for i in ids}
    acks[0].delivered_to(False)
    assert query([ids[0], ids[0]]) == {str(ids[0]): True}
    assert query([ids[0]]) == {str(ids[0]): False}, "answered true once, then forgotten"
    # Without a channel, no ackId, and no acknowledgement asked of the stream.
    plain = Request("POST", "/services/collector/event", {})
    decoded = endpoints.events.decode(b'{"event":"a"}', plain, LIMITS)
    assert not decoded.acknowledge
    assert json.loads(endpoints.events.answer(decoded, Accepted(["1"]), plain).body) == {"text": "Success", "code": 0}


def test_ack_queries_need_a_channel_and_a_list_of_ids() -> None:
    endpoints = hec.endpoints()
    for headers, query, body, code in [
        ({}, b"", b'{"acks":[1]}', 10),
        ({"x-splunk-request-channel": "x" * 200}, b"", b'{"acks":[1]}', 11),
        ({}, b"channel=c", b"", 5),
        ({}, b"channel=c", b'{"acks":"1"}', 6),
        ({}, b"channel=c", b'{"ack":[1]}', 6),
    ]:
        request = Request("POST", "/services/collector/ack", headers, query=query)
        with pytest.raises(hec.HecError) as refused:
            endpoints.ack.decode(body, request, LIMITS)
        assert refused.value.code == code and json.loads(endpoints.ack.refuse(refused.value, request).body)["code"] == code


def test_the_registry_is_bounded_oldest_first_and_its_ids_never_repeat() -> None:
    registry = hec.AckRegistry(max_channels=2, max_per_channel=3, max_pending=5)
    done = [Acknowledgement(0) for _ in range(10)]  # no records: settled and ok at once
    a = [registry.register("a", done[i]) for i in range(4)]  # over max_per_channel: a[0] dropped
    assert registry.pending == 3
    b = [registry.register("b", done[4 + i]) for i in range(3)]  # over max_pending: the oldest of "a", a[1], dropped
    assert (registry.pending, registry.channels) == (5, 2)
    c = registry.register("c", done[7])  # over max_channels: the least recently used, "a", dropped whole
    assert (registry.pending, registry.channels) == (4, 2)
    assert registry.query("a", a) == {str(i): False for i in a}
    assert registry.query("b", b) == {str(i): True for i in b}
    assert registry.query("c", [c]) == {str(c): True}
    assert (registry.pending, registry.channels) == (0, 0), "answered true, forgotten"
    again = registry.register("a", done[8])
    assert again > max(a + b + [c]), "a channel used again gets ids it never had"
