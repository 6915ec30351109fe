"""Loki push's dialect without a socket: the JSON and protobuf decoders driven by hypothesis, the
nanosecond timestamps kept exactly, and the plain-text refusals."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
from dataclasses import dataclass
from typing import Any

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import events
from app.core import Refusal
from app.dialects import loki
from app.dialects.base import Accepted, Limits, Request
from app.proto.loki.push_pb2 import PushRequest

LIMITS = Limits(max_events=1_000, max_decompressed_bytes=1 << 20)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
INT64 = 2**63


@dataclass
class Entry:
    nanoseconds: int
    line: str
    metadata: dict[str, str]


@dataclass
class Stream:
    labels: dict[str, str]
    entries: list[Entry]


texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True) | st.sampled_from(
    ["service_name", "app", "job", "service", "logger", "level", "severity", "detected_level"]
)
levels = st.sampled_from(["info", "warn", "warning", "error", "critical", "debug", "loud", ""])
entries = st.builds(
    Entry,
    st.integers(-INT64, INT64 - 1),
    texts.filter(bool),
    st.dictionaries(st.sampled_from(["level", "trace_id", "detected_level", "k"]), texts | levels, max_size=3),
)
streams = st.builds(
    Stream,
    st.dictionaries(label_names, texts.filter(bool) | levels.filter(bool), min_size=1, max_size=5),
    st.lists(entries, min_size=1, max_size=4),
)


def json_body(pushed: list[Stream]) -> bytes:
    def value(entry: Entry) -> list[Any]:
        return [str(entry.nanoseconds), entry.line, *([entry.metadata] if entry.metadata else [])]

    document = {"streams": [{"stream": s.labels, "values": [value(e) for e in s.entries]} for s in pushed]}
    return json.dumps(document).encode()


def selector(labels: dict[str, str]) -> str:
    """Labels as Loki's clients write them (Go's labels.String()): name="value", the value quoted."""
    return "{" + ", ".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in labels.items()) + "}"


def push_request(pushed: list[Stream]) -> PushRequest:
    request = PushRequest()
    for pushed_stream in pushed:
        stream = request.streams.add(labels=selector(pushed_stream.labels))
        for entry in pushed_stream.entries:
            added = stream.entries.add(line=entry.line)
            added.timestamp.seconds, added.timestamp.nanos = divmod(entry.nanoseconds, 1_000_000_000)
            for name, value in entry.metadata.items():
                added.structuredMetadata.add(name=name, value=value)
    return request


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def check(logs: list[events.LogIn], pushed: list[Stream]) -> None:
    expected = [(s, e) for s in pushed for e in s.entries]
    assert len(logs) == len(expected)
    for log, (stream, entry) in zip(logs, expected):
        assert log.message == entry.line
        assert log.timestamp == EPOCH + dt.timedelta(microseconds=entry.nanoseconds // 1000)
        attributes = log.attributes or {}
        assert int(attributes["timestampNs"]) == entry.nanoseconds, "the nanoseconds kept exactly"
        assert attributes["labels"] == stream.labels
        assert attributes.get("structuredMetadata", {}) == entry.metadata
        source = next((stream.labels[n] for n in loki.SOURCE_LABELS if stream.labels.get(n)), "loki")
        assert log.source == source[:255]
        level = next((entry.metadata[n] for n in loki.LEVEL_NAMES if entry.metadata.get(n)), None) or next(
            (stream.labels[n] for n in loki.LEVEL_NAMES if stream.labels.get(n)), None
        )
        assert log.level == ({"warning": "WARN", "critical": "FATAL"}.get(level or "", (level or "").upper())
                             if (level or "").upper() in {*events.LEVELS, "WARNING", "CRITICAL"} else "INFO")


@settings(max_examples=300, deadline=None)
@given(pushed=st.lists(streams, max_size=4))
def test_json_pushes_become_one_event_per_line(pushed: list[Stream]) -> None:
    body = json_body(pushed)
    check(loki.decode_json(body, 1_000), pushed)
    # The same through the dialect, gzip having been undone by the pipeline.
    decoded = loki.PUSH.decode(gzip.decompress(gzip.compress(body)), Request("POST", "/", {}, media_type="application/json"), LIMITS)
    check(decoded.events, pushed)


@settings(max_examples=300, deadline=None)
@given(pushed=st.lists(streams, max_size=4))
def test_protobuf_pushes_become_one_event_per_line(pushed: list[Stream]) -> None:
    encoded = push_request(pushed).SerializeToString()
    for media_type, headers, body in [
        ("application/x-protobuf", {}, snappy(encoded)),
        ("", {}, snappy(encoded)),  # no Content-Type: protobuf, as Loki takes it
        ("application/x-protobuf", {"content-encoding": "snappy"}, encoded),  # inflated by the pipeline already
    ]:
        check(loki.PUSH.decode(body, Request("POST", "/", headers, media_type=media_type), LIMITS).events, pushed)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), media_type=st.sampled_from(["application/json", "application/x-protobuf"]), raw=st.booleans())
def test_any_bytes_are_events_or_a_refusal(body: bytes, media_type: str, raw: bool) -> None:
    payload = snappy(body) if raw and media_type != "application/json" else body
    try:
        decoded = loki.PUSH.decode(payload, Request("POST", "/", {}, media_type=media_type), LIMITS)
    except Refusal as refusal:
        assert refusal.status in (400, 413) and refusal.describe()
        return
    assert all(isinstance(log, events.LogIn) and log.message for log in decoded.events)


@settings(max_examples=50, deadline=None)
@given(pushed=st.lists(streams, min_size=1, max_size=3))
def test_a_protobuf_push_cut_anywhere_is_events_or_a_400(pushed: list[Stream]) -> None:
    encoded = push_request(pushed).SerializeToString()
    json_encoded = json_body(pushed)
    for offset in range(len(encoded)):
        try:
            loki.decode_protobuf(encoded[:offset], 1_000)
        except Refusal as refusal:
            assert refusal.status == 400
    for offset in range(len(json_encoded)):
        with pytest.raises(Refusal):
            loki.decode_json(json_encoded[:offset], 1_000)


def test_python_logging_loki_payloads() -> None:
    body = json.dumps(
        {"streams": [{"stream": {"application": "billing", "severity": "warning", "logger": "pay"}, "values": [["1764064800123456789", "slow"]]}]}
    ).encode()
    [log] = loki.decode_json(body, 10)
    assert (log.source, log.level, log.message) == ("pay", "WARN", "slow")
    assert log.attributes == {"labels": {"application": "billing", "severity": "warning", "logger": "pay"}, "timestampNs": "1764064800123456789"}
    assert log.timestamp is not None and log.timestamp.isoformat() == "2025-11-25T10:00:00.123456+00:00"


@pytest.mark.parametrize(
    "body",
    [
        b"{", b"[]", b'{"streams": {}}', b'{"streams": [{"stream": {}, "values": [["1", "x"]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["1.5", "x"]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["9223372036854775808", "x"]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [[1, "x"]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["1", ""]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["1"]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["1", "x", {}, {}]]}]}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["1", "x", {"k": 1}]]}]}',
        b'{"streams": [{"stream": {"a": 1}, "values": [["1", "x"]]}]}',
        b'{"streams": [{"stream": {"a.b": "c"}, "values": [["1", "x"]]}]}',
        b'{"streams": [{"stream": {"a": "\xff"}, "values": [["1", "x"]]}]}',
        b'{"\xff": 1, "streams": []}',
        b'{"streams": [{"stream": {"a": "b"}, "values": [["1", ' + b"[" * 100_000 + b"]]}]}",
    ],
)
def test_malformed_json_pushes_are_a_400(body: bytes) -> None:
    with pytest.raises(Refusal) as refused:
        loki.decode_json(body, 10)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "labels",
    ['', '{}', 'app="x"', '{app=~"x"}', '{app!="x"}', 'up{app="x"}', '{app="x"} offset 5m', '{app="x" or b="c"}',
     '{app="x", app="y"}', '{app="x"}[5m]', '{app="x"} + 1', '{app=x}'],
)
def test_stream_labels_must_be_a_plain_label_set(labels: str) -> None:
    request = PushRequest()
    request.streams.add(labels=labels).entries.add(line="x")
    with pytest.raises(Refusal) as refused:
        loki.decode_protobuf(request.SerializeToString(), 10)
    assert refused.value.status == 400


def test_a_label_with_an_empty_value_is_no_label() -> None:
    body = b'{"streams": [{"stream": {"app": "a", "job": ""}, "values": [["1", "x"]]}]}'
    request = PushRequest()
    request.streams.add(labels='{app="a", job=""}').entries.add(line="x")
    for log in (*loki.decode_json(body, 10), *loki.decode_protobuf(request.SerializeToString(), 10)):
        assert log.attributes is not None and log.attributes["labels"] == {"app": "a"}
    request.streams[0].labels = '{job=""}'
    with pytest.raises(Refusal):
        loki.decode_protobuf(request.SerializeToString(), 10)
    with pytest.raises(Refusal):
        loki.decode_json(b'{"streams": [{"stream": {"job": ""}, "values": [["1", "x"]]}]}', 10)


def test_protobuf_labels_are_unquoted_and_timestamps_range_checked() -> None:
    request = PushRequest()
    stream = request.streams.add(labels='{job="a\\"b\\\\c\\n", app="é"}')
    stream.entries.add(line="x").timestamp.FromNanoseconds(1_764_064_800_000_000_001)
    [log] = loki.decode_protobuf(request.SerializeToString(), 10)
    assert log.attributes is not None and log.attributes["labels"] == {"job": 'a"b\\c\n', "app": "é"}
    assert log.attributes["timestampNs"] == "1764064800000000001" and log.source == "é"
    for seconds, nanos in ((10**12, 0), (0, -1), (0, 1_000_000_000)):
        entry = request.streams[0].entries[0]
        entry.timestamp.seconds, entry.timestamp.nanos = seconds, nanos
        with pytest.raises(Refusal):
            loki.decode_protobuf(request.SerializeToString(), 10)
    invalid = PushRequest()
    invalid.streams.add(labels='{app="x"}').entries.add(line="@@")
    with pytest.raises(Refusal):  # proto3 strings are UTF-8
        loki.decode_protobuf(invalid.SerializeToString().replace(b"@@", b"\xff\xfe"), 10)


def test_limits_snappy_bombs_and_entry_counts() -> None:
    request = push_request([Stream({"app": "a"}, [Entry(1, "x", {}) for _ in range(11)])])
    protobuf = Request("POST", "/", {}, media_type="application/x-protobuf")
    with pytest.raises(Refusal) as refused:
        loki.PUSH.decode(snappy(request.SerializeToString()), protobuf, Limits(max_events=10, max_decompressed_bytes=1 << 20))
    assert refused.value.status == 413
    bomb = snappy(b"\x00" * (2 << 20))
    with pytest.raises(Refusal) as refused:
        loki.PUSH.decode(bomb, protobuf, LIMITS)
    assert refused.value.status == 413
    with pytest.raises(Refusal) as refused:
        loki.PUSH.decode(request.SerializeToString(), protobuf, LIMITS)  # not snappy at all
    assert refused.value.status == 400


def test_answers_are_204_and_refusals_plain_text() -> None:
    request = Request("POST", "/loki/api/v1/push", {})
    answer = loki.PUSH.answer(loki.PUSH.decode(b'{"streams": []}', Request("POST", "/", {}, media_type="application/json"), LIMITS), Accepted([]), request)
    assert (answer.status, answer.body) == (204, b"")
    for refusal, status in [
        (Refusal(429, "rate limited", "slow down", headers={"Retry-After": "2"}), 429),
        (Refusal(503, "buffer full", "retry later", headers={"Retry-After": "1"}), 503),
        (Refusal(400, "bad request", "stream 0: bad"), 400),
        (Refusal(422, "invalid event", [{"index": 0}]), 400),
        (Refusal(401, "unauthorized", "no key"), 401),
    ]:
        answer = loki.PUSH.refuse(refusal, request)
        assert answer.status == status and answer.content_type.startswith("text/plain")
        assert answer.body.decode().startswith(refusal.error) and answer.body.endswith(b"\n")
        assert answer.headers.get("Retry-After") == refusal.headers.get("Retry-After")


def test_basic_credentials_give_their_password_as_the_key() -> None:
    basic = "Basic " + base64.b64encode(b"tenant:s3cret").decode()
    assert loki.authorization(Request("POST", "/", {"authorization": basic})) == "Bearer s3cret"
    assert loki.authorization(Request("POST", "/", {"authorization": "Bearer k"})) == "Bearer k"
    assert loki.authorization(Request("POST", "/", {})) is None
