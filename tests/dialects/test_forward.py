"""The forward protocol without sockets: every carrier mode, split at every offset, the shared-key
handshake as the specification computes it, and bombs that end in a ProtocolError, never more."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import events
from app.dialects import forward

UTC = dt.timezone.utc
pack = msgspec.msgpack.encode


def event_time(seconds: int, nanoseconds: int) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(0, struct.pack(">II", seconds, nanoseconds))


def out_forward_packed(tag: str, entries: bytes, option: dict[str, object]) -> bytes:
    """What Fluentd's out_forward writes: a fixarray of 3, the tag, the entries as str32 (binary inside)."""
    return b"\x93" + pack(tag) + b"\xdb" + struct.pack(">I", len(entries)) + entries + pack(option)


def take(session: forward.Session, chunks: list[bytes]) -> list[forward.Event]:
    out: list[forward.Event] = []
    for chunk in chunks:
        session.receive_data(chunk)
        while (event := session.next_event()) is not None:
            out.append(event)
    return out


ENTRIES = pack([1700000000, {"message": "one", "level": "error", "k": 1}]) + pack(
    [event_time(1700000001, 500_000_000), {"log": "two\n", "severity": "warning"}]
)
MESSAGES = [
    # Message mode, integer time, asking for an ack
    pack(["app.web", 1700000000, {"message": "hello", "host": "h1"}, {"chunk": "Y2h1bmsx"}]),
    # Message mode, EventTime
    pack(["app.web", event_time(1700000000, 123_456_789), {"message": "nanos"}]),
    # Forward mode
    pack(["app.api", [[1700000000, {"message": "a"}], [1700000001.5, {"message": "b"}]], {"size": 2}]),
    # PackedForward, as bin and as out_forward's str32
    pack(["app.packed", ENTRIES, {"size": 2}]),
    out_forward_packed("app.fluentd", ENTRIES, {"size": 2, "chunk": "Y2h1bmsy"}),
    # CompressedPackedForward: two gzip members, as Fluentd's compressed chunks are
    pack(["app.gz", gzip.compress(ENTRIES[:20]) + gzip.compress(ENTRIES[20:]), {"compressed": "gzip", "size": 2}]),
    # a heartbeat
    pack(None),
]


def test_every_mode_at_every_offset() -> None:
    stream = b"".join(MESSAGES)
    whole = take(forward.Session(), [stream])
    assert [type(event).__name__ for event in whole] == ["Entries"] * 6 + ["Ignored"]
    for offset in range(len(stream) + 1):
        assert take(forward.Session(), [stream[:offset], stream[offset:]]) == whole, offset


def test_the_events_of_each_mode() -> None:
    out = take(forward.Session(), [b"".join(MESSAGES)])
    first, nanos, api, packed, fluentd, compressed, heartbeat = out
    assert isinstance(first, forward.Entries) and first.chunk == "Y2h1bmsx"
    assert first.events == [
        events.LogIn(
            source="app.web", level="INFO", message="hello", timestamp=dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
            attributes={"forward": {"tag": "app.web", "record": {"host": "h1"}}},
        )
    ]
    assert isinstance(nanos, forward.Entries)
    assert nanos.events[0].timestamp == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert isinstance(api, forward.Entries) and [e.message for e in api.events] == ["a", "b"] and api.chunk is None
    for mode in (packed, fluentd, compressed):
        assert isinstance(mode, forward.Entries)
        assert [(e.message, e.level) for e in mode.events] == [("one", "ERROR"), ("two\n", "WARN")]
        assert mode.events[1].timestamp == dt.datetime(2023, 11, 14, 22, 13, 21, 500000, tzinfo=UTC)
    assert isinstance(fluentd, forward.Entries) and fluentd.chunk == "Y2h1bmsy"
    assert heartbeat == forward.Ignored("heartbeat")


def test_a_record_without_message_or_log_is_its_own_message_and_bad_entries_are_counted() -> None:
    body = pack(["t", [[1, {"a": 1}], [1, "not a map"], ["x", {}], [1, {"message": ""}]]])
    (entries,) = take(forward.Session(), [body])
    assert isinstance(entries, forward.Entries)
    assert [e.message for e in entries.events] == ['{"a":1}', "-"]
    assert entries.events[0].attributes == {"forward": {"tag": "t"}}
    assert entries.dropped == 2


def test_an_entry_of_invalid_utf8_is_dropped_not_the_chunk() -> None:
    bad = b"\x92\x01\x81\xa1m\xa2\xff\xfe"  # [1, {"m": <str of no UTF-8>}]
    (entries,) = take(forward.Session(), [out_forward_packed("t", pack([1, {"message": "ok"}]) + bad, {})])
    assert isinstance(entries, forward.Entries)
    assert [e.message for e in entries.events] == ["ok"] and entries.dropped == 1


def client_ping(helo: bytes, key: str, hostname: str = "client.example") -> tuple[bytes, bytes, bytes]:
    kind, options = msgspec.msgpack.decode(helo)
    assert kind == "HELO" and options["auth"] == b"" and options["keepalive"] is True
    nonce, salt = options["nonce"], b"salty"
    digest = hashlib.sha512(salt + hostname.encode() + nonce + key.encode()).hexdigest()
    return pack(["PING", hostname, salt, digest, "", ""]), nonce, salt


def test_the_shared_key_handshake() -> None:
    session = forward.Session(shared_key="secret", hostname="gw.example")
    helo = session.greeting()
    assert helo is not None
    ping, nonce, salt = client_ping(helo, "secret")
    (reply,) = take(session, [ping])
    assert isinstance(reply, forward.Reply) and not reply.close
    kind, ok, reason, server, digest = msgspec.msgpack.decode(reply.data)
    assert (kind, ok, reason, server) == ("PONG", True, "", "gw.example")
    assert digest == hashlib.sha512(salt + b"gw.example" + nonce + b"secret").hexdigest()
    assert isinstance(take(session, [MESSAGES[0]])[0], forward.Entries)


def test_a_wrong_key_is_answered_and_closed_and_events_before_the_handshake_are_refused() -> None:
    session = forward.Session(shared_key="secret")
    helo = session.greeting()
    assert helo is not None
    (reply,) = take(session, [client_ping(helo, "wrong")[0]])
    assert isinstance(reply, forward.Reply) and reply.close
    assert msgspec.msgpack.decode(reply.data)[:3] == ["PONG", False, "shared_key mismatch"]
    with pytest.raises(forward.ProtocolError) as info:
        take(forward.Session(shared_key="secret"), [MESSAGES[0]])
    assert info.value.reason == "handshake"
    assert forward.Session().greeting() is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xdd\xff\xff\xff\xff" + b"\x01" * 70_000, "too_large"),  # an array of 4 billion: truncated until the limit
        (b"\x91" * 5000 + b"\xc0", "malformed"),  # nested deeper than any decoder goes
        (b"\xc1", "malformed"),  # a byte msgpack never uses
        (pack(["t", gzip.compress(b"\0" * 5_000_000), {"compressed": "gzip"}]), "decompression"),
        (pack(["t", b"\x92\x01", {}]), "malformed"),  # packed entries that end inside an entry
        (pack(["t"]), "malformed"),
        (pack([1, 2, 3]), "malformed"),
        (pack(["t", [1], "option"]), "malformed"),
    ],
)
def test_bombs_and_malformed_messages_end_the_connection(body: bytes, reason: str) -> None:
    session = forward.Session(max_message_bytes=65536, max_decompressed_bytes=1_000_000)
    with pytest.raises(forward.ProtocolError) as info:
        take(session, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert info.value.reason == reason


def test_a_message_over_the_limit_is_refused_once_the_limit_is_passed() -> None:
    body = pack(["t", 1, {"message": "x" * 5000}])
    session = forward.Session(max_message_bytes=4096)
    session.receive_data(body[:4096])
    assert session.next_event() is None
    session.receive_data(body[4096:])
    with pytest.raises(forward.ProtocolError):
        session.next_event()


def test_a_value_other_than_an_array_is_ignored() -> None:
    assert take(forward.Session(), [pack({"a": 1}), pack("text")]) == [forward.Ignored("not_an_array")] * 2


def test_the_ack() -> None:
    assert msgspec.msgpack.decode(forward.ack("abc")) == {"ack": "abc"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 400))
def test_random_bytes_give_events_or_a_protocol_error(data: bytes, cut: int) -> None:
    session = forward.Session(max_message_bytes=1024, max_decompressed_bytes=4096)
    try:
        out = take(session, [data[:cut], data[cut:]])
    except forward.ProtocolError:
        return
    for event in out:
        if isinstance(event, forward.Entries):
            for log in event.events:
                msgspec.json.encode(log)  # what the stream will encode


records = st.dictionaries(
    st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none()),
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), records), min_size=1, max_size=5), st.data())
def test_packed_entries_survive_any_split(entries: list[tuple[int, dict[str, object]]], data: st.DataObject) -> None:
    body = pack(["tag", b"".join(pack([t, r]) for t, r in entries), {"chunk": "c"}])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=5)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    (whole,) = take(forward.Session(), [body])
    assert take(forward.Session(), chunks) == [whole]
    assert isinstance(whole, forward.Entries) and len(whole.events) + whole.dropped == len(entries)
    for log in whole.events:
        assert events.decode_log(msgspec.json.encode(log)) == log
