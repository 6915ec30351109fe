import datetime as dt

import pytest

from app import events


def test_a_valid_log_is_decoded_and_its_level_normalised() -> None:
    log = events.decode_log(b'{"source":"api","level":"warn","message":"disk","attributes":{"a":1},"traceId":"t1"}')
    assert (log.source, log.level, log.message, log.attributes, log.traceId) == ("api", "WARN", "disk", {"a": 1}, "t1")
    assert log.timestamp is None


def test_timestamps_are_parsed_and_formatted_in_utc() -> None:
    log = events.decode_log(b'{"source":"a","level":"INFO","message":"m","timestamp":"2026-01-02T03:04:05+01:00"}')
    assert log.timestamp is not None
    assert events.format_timestamp(log.timestamp.astimezone(dt.timezone.utc)) == "2026-01-02T02:04:05Z"


@pytest.mark.parametrize(
    "body",
    [
        b'{"source":"a","level":"LOUD","message":"m"}',
        b'{"source":"","level":"INFO","message":"m"}',
        b'{"level":"INFO","message":"m"}',
        b'{"source":"a","level":"INFO","message":"m","extra":1}',
        b'{"source":"a","level":"INFO","message":"m","timestamp":"yesterday"}',
        b'{"source":"a","level":"INFO","message":42}',
        b"[1,2]",
    ],
)
def test_schema_violations_are_invalid_events(body: bytes) -> None:
    with pytest.raises(events.InvalidEvents):
        events.decode_log(body)


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"source":"a",}', b""])
def test_malformed_json_is_told_apart_from_schema_errors(body: bytes) -> None:
    with pytest.raises(events.InvalidJSON):
        events.decode_log(body)


def test_a_batch_reports_every_invalid_index_and_accepts_none() -> None:
    body = (
        b'{"logs":[{"source":"a","level":"INFO","message":"ok"},'
        b'{"source":"b","level":"NOPE","message":"x"},'
        b'{"source":"c","level":"INFO","message":"ok"},'
        b'{"source":"d","level":"INFO"}]}'
    )
    with pytest.raises(events.InvalidEvents) as info:
        events.decode_log_batch(body, 100)
    assert [e["index"] for e in info.value.errors] == [1, 3]


def test_batch_limits() -> None:
    one = b'{"source":"a","level":"INFO","message":"m"}'
    with pytest.raises(events.TooManyEvents):
        events.decode_log_batch(b'{"logs":[' + b",".join([one] * 3) + b"]}", 2)
    with pytest.raises(events.InvalidEvents):
        events.decode_log_batch(b'{"logs":[]}', 2)
    with pytest.raises(events.InvalidEvents):
        events.decode_log_batch(b'{"records":[]}', 2)
    assert len(events.decode_log_batch(b'{"logs":[' + b",".join([one] * 2) + b"]}", 2)) == 2


def test_ndjson_skips_blank_lines_and_rejects_a_bad_line() -> None:
    one = b'{"source":"a","level":"INFO","message":"m"}'
    assert len(events.decode_log_ndjson(one + b"\n\n" + one + b"\n", 10)) == 2
    with pytest.raises(events.InvalidJSON):
        events.decode_log_ndjson(one + b"\n{oops\n", 10)
    with pytest.raises(events.InvalidEvents) as info:
        events.decode_log_ndjson(one + b'\n{"source":"a"}\n', 10)
    assert info.value.errors[0]["index"] == 1


@pytest.mark.parametrize("depth", [2_000, 1_000_000])
def test_json_nested_too_deeply_is_a_schema_error_not_a_crash(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for decode in (
        lambda: events.decode_log(b'{"source":"a","level":"INFO","message":"m","attributes":{"x":' + nested + b"}}"),
        lambda: events.decode_log_batch(b'{"logs":[' + nested + b"]}", 10),
        lambda: events.decode_log_ndjson(nested, 10),
        lambda: events.decode_transaction(b'{"userId":"u","type":"PAYMENT","amount":1,"currency":"USD","metadata":{"x":' + nested + b"}}"),
        lambda: events.decode_transaction_batch(b'{"transactions":[' + nested + b"]}", 10),
    ):
        with pytest.raises(events.InvalidEvents):
            decode()
    with pytest.raises(events.InvalidEvents, match="nested too deeply"):
        events.decode_log(b'{"source":"a","level":"INFO","message":"m","attributes":{"x":' + nested + b"}}")


def test_a_valid_batch_decodes_in_one_pass_to_what_each_event_decodes_to() -> None:
    items = [
        b'{"source":"a","level":"warn","message":"m","timestamp":"2026-01-02T03:04:05"}',
        b'{"source":"b","level":"INFO","message":"m","timestamp":"2026-01-02T03:04:05.5+02:00","attributes":{"k":[1]}}',
        b'{"source":"c","level":"Error","message":"m","traceId":"t"}',
    ]
    one_by_one = [events.decode_log(item) for item in items]
    assert events.decode_log_batch(b'{"logs":[' + b",".join(items) + b"]}", 10) == one_by_one
    assert events.decode_log_ndjson(b"\r\n".join(items) + b"\n\n", 10) == one_by_one
    assert [log.level for log in one_by_one] == ["WARN", "INFO", "ERROR"]
    # A timestamp without a zone is UTC.
    assert one_by_one[0].timestamp == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
