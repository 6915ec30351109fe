"""The syslog dialect without sockets: RFC 6587 framing split at every offset, RFC 5424 strictly,
RFC 3164 as its senders write it, and every line an event the application stream takes."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import events
from app.dialects import syslog

UTC = dt.timezone.utc
NOW = dt.datetime(2024, 1, 2, 12, 0, tzinfo=UTC)


def frames_of(chunks: list[bytes], limit: int = syslog.DEFAULT_MAX_MESSAGE_BYTES) -> tuple[list[bytes], int]:
    framer = syslog.Framer(limit)
    frames = []
    for chunk in chunks:
        framer.receive_data(chunk)
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
    return frames, framer.pending()


def framed(message: bytes, framing: str) -> bytes:
    if framing == "octet":
        return b"%d %s" % (len(message), message)
    return message + {"lf": b"\n", "crlf": b"\r\n", "nul": b"\x00"}[framing]


# A non-transparent frame holds no LF or NUL, and one sent with CRLF no CR at its end either.
plain_messages = st.binary(min_size=0, max_size=60).map(
    lambda b: b"<13>" + b.replace(b"\n", b"").replace(b"\x00", b"").replace(b"\r", b"")
)
any_messages = st.binary(min_size=1, max_size=60)
framed_messages = st.one_of(
    st.tuples(any_messages, st.just("octet")),
    st.tuples(plain_messages, st.sampled_from(["lf", "crlf", "nul"])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(framed_messages, min_size=1, max_size=8), st.data())
def test_frames_survive_any_split_and_framing_is_chosen_per_message(messages: list[tuple[bytes, str]], data: st.DataObject) -> None:
    stream = b"".join(framed(message, framing) for message, framing in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    frames, pending = frames_of(chunks)
    assert frames == [message for message, _ in messages]
    assert pending == 0


def test_every_offset_of_a_mixed_stream() -> None:
    messages = [
        (b"<34>1 2003-10-11T22:14:15.003Z host su - ID47 - \xef\xbb\xbfhello", "octet"),
        (b"<13>Oct 11 22:14:15 host app: a line", "lf"),
        (b"<14>python handler", "nul"),
        (b"<13>1 - - - - - - crlf", "crlf"),
        (b"line with\nnewline inside, octet-counted", "octet"),
    ]
    stream = b"".join(framed(m, f) for m, f in messages)
    for offset in range(len(stream) + 1):
        frames, pending = frames_of([stream[:offset], stream[offset:]])
        assert frames == [m for m, _ in messages], offset
        assert pending == 0
    # A byte at a time too.
    assert frames_of([bytes([b]) for b in stream])[0] == [m for m, _ in messages]


def test_an_octet_count_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    framer = syslog.Framer(100)
    framer.receive_data(b"101 <13>")
    with pytest.raises(syslog.FramingError) as info:
        framer.next_frame()
    assert info.value.reason == "too_large"


def test_a_line_over_the_limit_without_a_trailer_is_refused() -> None:
    framer = syslog.Framer(100)
    framer.receive_data(b"<13>" + b"x" * 96)
    assert framer.next_frame() is None
    framer.receive_data(b"y")
    with pytest.raises(syslog.FramingError):
        framer.next_frame()


def test_an_unfinished_frame_is_pending_at_the_end() -> None:
    assert frames_of([b"<13>complete\n<13>cut"]) == ([b"<13>complete"], 7)
    assert frames_of([b"20 <13>short"]) == ([], 12)
    assert frames_of([b"12"]) == ([], 2)
    assert frames_of([b"<13>done\n\r\n\x00"]) == ([b"<13>done"], 0)


def test_a_digit_run_without_a_space_is_a_non_transparent_line() -> None:
    assert frames_of([b"123abc\n", b"12345678901 eleven digits\n"])[0] == [b"123abc", b"12345678901 eleven digits"]


def test_datagrams_lose_their_trailers() -> None:
    assert syslog.datagram_frame(b"<13>hello\r\n\x00") == b"<13>hello"


# -- RFC 5424 ---------------------------------------------------------------------------------


def test_rfc5424_examples() -> None:
    su = syslog.parse(
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed for lonvick"
    )
    assert (su.format, su.facility, su.severity, su.hostname, su.app_name, su.procid, su.msgid) == (
        "rfc5424", 4, 2, "mymachine.example.com", "su", None, "ID47",
    )
    assert su.timestamp == dt.datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert su.message == "'su root' failed for lonvick"

    offset = syslog.parse(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time")
    assert offset.timestamp == dt.datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=UTC)
    assert (offset.procid, offset.message) == ("8710", "%% It's time")

    sd = syslog.parse(
        b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
        b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'
    )
    assert sd.structured_data == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
        "examplePriority@32473": {"class": "high"},
    }
    assert sd.message == ""


def test_structured_data_escapes_and_repeated_names() -> None:
    line = rb'<13>1 - h a - - [x@1 v="q\"uote \\back \]bracket \n kept" v="two"] msg'
    message = syslog.parse(line)
    assert message.structured_data == {"x@1": {"v": ['q"uote \\back ]bracket \\n kept', "two"]}}
    assert message.message == "msg"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"<13>2 - - - - - -", "version"),
        (b"<13>1 2003-10-11 22:14:15Z h a - - -", "TIMESTAMP"),
        (b"<13>1 2003-10-11T22:14:15 h a - - -", "TIMESTAMP"),  # no offset
        (b"<13>1 2003-10-11T22:14:15.1234567Z h a - - -", "TIMESTAMP"),  # 7 fraction digits
        (b"<13>1 2003-02-30T22:14:15Z h a - - -", "TIMESTAMP"),
        (b"<13>1 - h a - - [x@1 v=\"open", "PARAM-VALUE"),
        (b"<13>1 - h a - - [x@1 v=\"a]b\"]", "escaped"),
        (b"<13>1 - h a - - [x@1 v=\"a\"", "not closed"),
        (b"<13>1 - h a - - [x@1][x@1]", "twice"),
        (b"<13>1 - h a - - [x@1]msg", "space"),
        (b"<13>1 - h a - - x", "STRUCTURED-DATA"),
        (b"<13>1 - h a - -", "header"),
        (b"<13>1 - h " + b"a" * 49 + b" - - -", "APP-NAME"),
        (b"<13>1 - h a - - - \xef\xbb\xbf\xff", "BOM"),
    ],
)
def test_rfc5424_is_parsed_strictly_and_a_bad_line_kept_whole(line: bytes, why: str) -> None:
    message = syslog.parse(line)
    assert message.format == "unparsed"
    assert message.error is not None and message.error.startswith("RFC 5424") and why in message.error
    assert message.message == syslog.text(line)


# -- RFC 3164, as its senders write it ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "host", "app", "procid", "text", "stamp"),
    [
        # rsyslog's RSYSLOG_TraditionalForwardFormat, syslog-ng's network() default, logger --rfc3164
        (b"<30>Oct 11 22:14:15 web1 nginx[1234]: GET / 200", "web1", "nginx", "1234", "GET / 200", (10, 11, 22, 14, 15)),
        (b"<13>Jan  2 03:04:05 host root: padded day", "host", "root", None, "padded day", (1, 2, 3, 4, 5)),
        # a local sender's form, without a host
        (b"<30>Oct  1 09:01:02 cron[123]: job", None, "cron", "123", "job", (10, 1, 9, 1, 2)),
        # Python's SysLogHandler: no timestamp, no host; an ident when the Formatter gives one
        (b"<14>hello world", None, None, None, "hello world", None),
        (b"<14>myapp: hello", None, "myapp", None, "hello", None),
        # an RFC 3339 timestamp in the legacy format (syslog-ng's ts-format(iso), rsyslog's ...ForwardFormat)
        (b"<13>2023-10-11T22:14:15.123+02:00 host prog[1]: iso", "host", "prog", "1", "iso", None),
        (b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!", "10.0.0.99", None, None, "Use the BFG!", (2, 5, 17, 32, 18)),
    ],
)
def test_rfc3164_forms(
    line: bytes, host: str | None, app: str | None, procid: str | None, text: str, stamp: tuple[int, ...] | None
) -> None:
    message = syslog.parse(line, NOW)
    assert message.format == "rfc3164" and message.error is None
    assert (message.hostname, message.app_name, message.procid, message.message) == (host, app, procid, text)
    if stamp is not None:
        assert message.timestamp is not None
        assert (message.timestamp.month, message.timestamp.day, message.timestamp.hour, message.timestamp.minute,
                message.timestamp.second) == stamp


def test_a_bsd_timestamp_takes_the_year_it_was_most_likely_sent_in() -> None:
    assert syslog.parse(b"<13>Dec 31 23:59:59 h a: m", NOW).timestamp == dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert syslog.parse(b"<13>Jan  2 11:00:00 h a: m", NOW).timestamp == dt.datetime(2024, 1, 2, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(("line", "reason"), [(b"no pri here", "no <PRI>"), (b"<192>x", "PRI"), (b"<013>x", "PRI")])
def test_a_line_without_a_valid_pri_is_kept_whole(line: bytes, reason: str) -> None:
    message = syslog.parse(line)
    assert message.format == "unparsed" and message.error is not None and reason in message.error
    assert message.message == line.decode()


# -- events -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("severity", "level"), list(enumerate(["FATAL", "FATAL", "FATAL", "ERROR", "WARN", "INFO", "INFO", "DEBUG"])))
def test_severity_to_level(severity: int, level: str) -> None:
    event = syslog.log_event(syslog.parse(b"<%d>1 - - app - - - m" % (8 + severity)), "127.0.0.1:5", "tcp")
    assert event.level == level
    assert event.attributes is not None
    assert event.attributes["syslog"]["severity"] == syslog.SEVERITIES[severity]


def test_the_event_of_a_message() -> None:
    event = syslog.log_event(
        syslog.parse(b'<165>1 2003-10-11T22:14:15.003Z host evntslog 12 ID47 [a@1 k="v"] \xef\xbb\xbfhello'),
        "127.0.0.1:4242", "tls",
    )
    assert (event.source, event.level, event.message) == ("evntslog", "INFO", "hello")
    assert event.attributes == {
        "syslog": {
            "format": "rfc5424", "transport": "tls", "facility": "local4", "severity": "notice", "host": "host",
            "app": "evntslog", "procid": "12", "msgid": "ID47", "structuredData": {"a@1": {"k": "v"}},
            "peer": "127.0.0.1:4242",
        }
    }
    assert syslog.log_event(syslog.parse(b"<13>1 - host - - - -"), None, "udp").source == "host"
    nameless = syslog.log_event(syslog.parse(b"<13>1 - - - - - -"), None, "udp")
    assert (nameless.source, nameless.message) == ("syslog", "-")
    unparsed = syslog.log_event(syslog.parse(b"junk \xff"), None, "udp")
    assert (unparsed.source, unparsed.message) == ("syslog", "junk \\xff")
    assert unparsed.attributes is not None and "parseError" in unparsed.attributes["syslog"]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"<13>1 " + b), st.binary(max_size=200).map(lambda b: b"<13>" + b)))
def test_any_line_becomes_an_event_the_application_stream_takes(line: bytes) -> None:
    event = syslog.log_event(syslog.parse(line, NOW), "127.0.0.1:1", "tcp")
    # What the stream encodes must pass the native schema, as an HTTP client's event would.
    assert events.decode_log(msgspec.json.encode(event)) == event


def test_the_lf_a_sender_counts_into_its_frame_is_no_part_of_the_message() -> None:
    # rsyslog's RSYSLOG_SyslogProtocol23Format and syslog-ng's syslog() end each message with LF, inside the count.
    assert syslog.parse(b"<13>1 2026-12-02T18:55:43.803918+00:00 vm tag - - -  one\n").message == " one"
    assert syslog.parse(b'<13>1 2026-12-02T18:55:59+00:00 vm tag - - [meta sequenceId="1"] two\r\n').message == "two"
    assert syslog.parse(b"<13>Oct 11 22:14:15 host app: three\n", NOW).message == "three"
