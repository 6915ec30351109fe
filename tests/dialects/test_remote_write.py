"""The remote_write 1.0 decoder, sans-IO: bytes in, events or a Refusal out, never anything else."""

from __future__ import annotations

import datetime as dt
import math
import struct

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import events
from app.core import Refusal
from app.dialects.base import Accepted, Limits, Request
from app.dialects.remote_write import REMOTE_WRITE, SAMPLES_WRITTEN, decode_write_request
from app.proto.prometheus.remote_pb2 import WriteRequest
from app.proto.prometheus.types_pb2 import BucketSpan, Histogram, Label, MetricMetadata, Sample, TimeSeries

LIMITS = Limits(max_events=10_000, max_decompressed_bytes=1 << 20)
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
# A native histogram sample as Prometheus writes one: three observations, in the bucket (0.5, 1].
HISTOGRAM = Histogram(
    count_int=3, sum=2.25, schema=0, zero_threshold=1e-128, positive_spans=[BucketSpan(offset=0, length=1)],
    positive_deltas=[3], reset_hint=Histogram.NO, timestamp=1_764_064_800_000,
)


def series(name: str | None, samples: list[tuple[float, int]], **labels: str) -> TimeSeries:
    all_labels = ([("__name__", name)] if name is not None else []) + sorted(labels.items())
    return TimeSeries(
        labels=[Label(name=k, value=v) for k, v in all_labels],
        samples=[Sample(value=v, timestamp=t) for v, t in samples],
    )


def snappy(request: WriteRequest) -> bytes:
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def request(content_type: str = "application/x-protobuf", encoding: str | None = "snappy") -> Request:
    headers = {"content-type": content_type}
    if encoding is not None:
        headers["content-encoding"] = encoding
    return Request("POST", "/api/v1/write", headers, media_type="application/x-protobuf")


def test_each_sample_is_an_event_with_the_series_labels_and_its_time() -> None:
    load = [(0.5, 1_764_064_800_123), (0.75, 1_764_064_801_123)]
    body = WriteRequest(
        timeseries=[
            series("node_load1", load, instance="10.0.0.1:9100", job="n"),
            series("up", [(1.0, 1_764_064_800_000)], job="prometheus"),
        ]
    ).SerializeToString()
    decoded = decode_write_request(body, LIMITS, compressed=False)
    first, second, third = decoded.events
    assert first == events.MetricIn(
        "10.0.0.1:9100", "node_load1", 0.5, "", {"instance": "10.0.0.1:9100", "job": "n"},
        dt.datetime(2025, 11, 25, 10, 0, 0, 123_000, tzinfo=dt.timezone.utc),
    )
    assert first.timestamp is not None
    assert second.value == 0.75 and second.timestamp == first.timestamp + dt.timedelta(seconds=1)
    assert third.host == "prometheus" and third.labels == {"job": "prometheus"}  # no instance: the job
    assert decoded.skipped == {}


def test_the_host_is_host_then_hostname_then_instance_then_job_else_unknown() -> None:
    def host(**labels: str) -> str:
        body = WriteRequest(timeseries=[series("m", [(1, 0)], **labels)]).SerializeToString()
        decoded = decode_write_request(body, LIMITS, compressed=False)
        return str(decoded.events[0].host)

    assert host(host="h", hostname="n", instance="i", job="j") == "h"
    assert host(hostname="n", instance="i", job="j") == "n"
    assert host(instance="i", job="j") == "i"
    assert host(job="j") == "j"
    assert host(instance="", region="eu") == "unknown"


def test_staleness_markers_and_other_non_finite_samples_are_skipped_and_counted() -> None:
    body = WriteRequest(
        timeseries=[
            series("m", [(1.0, 1), (STALE, 2), (math.nan, 3), (math.inf, 4), (-math.inf, 5), (STALE, 6)], job="j")
        ]
    ).SerializeToString()
    decoded = decode_write_request(body, LIMITS, compressed=False)
    assert [e.value for e in decoded.events] == [1.0]
    assert decoded.skipped == {"stale": 2, "non_finite": 3}


def test_metadata_only_and_empty_requests_hold_no_event() -> None:
    # The metric metadata Prometheus sends apart from samples (metadata_config.send): read, nothing to take.
    up = MetricMetadata(type=MetricMetadata.GAUGE, metric_family_name="up", help="1 if the target is up", unit="")
    metadata = WriteRequest(metadata=[up]).SerializeToString()
    assert WriteRequest.FromString(metadata).metadata[0].metric_family_name == "up"
    for body in (b"", metadata, WriteRequest(timeseries=[series("m", [], job="j")]).SerializeToString()):
        assert decode_write_request(body, LIMITS, compressed=False).events == []


@pytest.mark.parametrize(
    ("timeseries", "why"),
    [
        (series(None, [(1, 0)], job="j"), "no __name__"),
        (series("m", [(1, 0)], **{f"l{i}": "v" for i in range(65)}), "65 labels besides __name__"),
        (series("m", [(1, 0)], job="j", region="x" * 1025), "length <= 1024"),
        (series("m", [(1, 0)], **{"x" * 129: "v"}), "length <= 128"),
        (series("m" * 256, [(1, 0)], job="j"), "length <= 255"),
        (series("m", [(1, 0)], instance="i" * 256), "length <= 255"),
        (series("m", [(1, 2**62)], job="j"), "out of range"),
        (TimeSeries(labels=[Label(name="__name__", value="h")], histograms=[HISTOGRAM]), "native histograms"),
        (TimeSeries(labels=[Label(name="__name__", value="h")], samples=[Sample(value=1)], histograms=[Histogram()]),
         "native histograms"),
        (TimeSeries(labels=[Label(name="__name__", value="m"), Label(name="a", value="1"), Label(name="a", value="2")],
                    samples=[Sample(value=1)]), "appears twice"),
    ],
)
def test_an_invalid_series_is_a_400_naming_it(timeseries: TimeSeries, why: str) -> None:
    body = WriteRequest(timeseries=[series("ok", [(1, 0)], job="j"), timeseries]).SerializeToString()
    with pytest.raises(Refusal) as refused:
        decode_write_request(body, LIMITS, compressed=False)
    assert refused.value.status == 400 and why in refused.value.detail
    name = next((label.value for label in timeseries.labels if label.name == "__name__"), "")
    assert str(refused.value.detail).startswith(f"{name}{{"[:50])


def test_64_labels_besides_the_name_are_taken() -> None:
    body = WriteRequest(timeseries=[series("m", [(1, 0)], **{f"l{i}": "v" for i in range(64)})]).SerializeToString()
    assert len(decode_write_request(body, LIMITS, compressed=False).events[0].labels) == 64


def test_more_samples_than_max_events_is_a_413() -> None:
    body = WriteRequest(timeseries=[series("m", [(1, t) for t in range(11)], job="j")]).SerializeToString()
    with pytest.raises(Refusal) as refused:
        decode_write_request(body, Limits(max_events=10), compressed=False)
    assert refused.value.status == 413 and "max_samples_per_send" in refused.value.detail


def test_a_body_without_content_encoding_is_inflated_as_snappy_bounded_by_its_stated_length() -> None:
    written = WriteRequest(timeseries=[series("m", [(1, 0)], job="j")])
    dialect_request = request(encoding=None)
    assert len(REMOTE_WRITE.decode(snappy(written), dialect_request, LIMITS).events) == 1
    # With a Content-Encoding the pipeline inflated it already.
    assert len(REMOTE_WRITE.decode(written.SerializeToString(), request(), LIMITS).events) == 1
    bomb = bytes(cramjam.snappy.compress_raw(b"\0" * (2 << 20)))
    with pytest.raises(Refusal) as refused:
        REMOTE_WRITE.decode(bomb, dialect_request, LIMITS)
    assert refused.value.status == 413
    with pytest.raises(Refusal) as refused:
        REMOTE_WRITE.decode(written.SerializeToString(), dialect_request, LIMITS)  # not snappy
    assert refused.value.status == 400


def test_remote_write_2_is_a_415_and_1_is_taken_by_its_proto_name_too() -> None:
    body = WriteRequest(timeseries=[series("m", [(1, 0)], job="j")]).SerializeToString()
    with pytest.raises(Refusal) as refused:
        REMOTE_WRITE.decode(body, request("application/x-protobuf;proto=io.prometheus.write.v2.Request"), LIMITS)
    assert refused.value.status == 415 and "2.0" in refused.value.detail
    named = request('application/x-protobuf; proto="prometheus.WriteRequest"')
    assert len(REMOTE_WRITE.decode(body, named, LIMITS).events) == 1


def test_answers_are_204_counting_what_was_written_and_refusals_are_one_line_of_text() -> None:
    decoded = decode_write_request(WriteRequest().SerializeToString(), LIMITS, compressed=False)
    answer = REMOTE_WRITE.answer(decoded, Accepted(["a", "b"]), request())
    assert (answer.status, answer.body, answer.headers[SAMPLES_WRITTEN]) == (204, b"", "2")
    refused = REMOTE_WRITE.refuse(Refusal(429, "rate limited", "retry later", headers={"Retry-After": "1"}), request())
    assert (refused.status, refused.body) == (429, b"rate limited: retry later\n")
    assert refused.headers == {"Retry-After": "1"}
    assert refused.content_type.startswith("text/plain")


def test_basic_auth_passwords_are_taken_as_the_api_key() -> None:
    basic = Request("POST", "/api/v1/write", {"authorization": "Basic dXNlcjpzZWNyZXQ="})  # user:secret
    assert REMOTE_WRITE.authorization(basic) == "Bearer secret"
    assert REMOTE_WRITE.authorization(Request("POST", "/", {"authorization": "Bearer k"})) == "Bearer k"
    assert REMOTE_WRITE.authorization(Request("POST", "/", {"authorization": "Basic %%%"})) is None


# -- hypothesis: whatever the bytes, Decoded or Refusal ----------------------------------------

texts = st.text(max_size=12) | st.sampled_from(["__name__", "instance", "job", "host", ""])
values = st.floats() | st.sampled_from([STALE, 0.0, -0.0, 1e308])
timestamps = st.integers(-(2**63), 2**63 - 1) | st.integers(0, 2_000_000_000_000)
timeseries = st.builds(
    lambda named, labels, samples, histograms: TimeSeries(
        labels=[Label(name=k, value=v) for k, v in ([("__name__", "m")] if named else []) + labels],
        samples=[Sample(value=v, timestamp=t) for v, t in samples],
        histograms=[HISTOGRAM for _ in range(histograms)],
    ),
    st.booleans(),
    st.lists(st.tuples(texts, texts), max_size=5),
    st.lists(st.tuples(values, timestamps), max_size=4),
    st.sampled_from([0, 0, 0, 1]),
)
write_requests = st.lists(timeseries, max_size=4).map(lambda ts: WriteRequest(timeseries=ts).SerializeToString())


def _decode(body: bytes, compressed: bool) -> None:
    try:
        decoded = decode_write_request(body, Limits(max_events=8, max_decompressed_bytes=4096), compressed=compressed)
    except Refusal as refusal:
        assert refusal.status in (400, 413)
        return
    for event in decoded.events:
        assert isinstance(event, events.MetricIn) and math.isfinite(event.value)
        assert event.timestamp is not None and event.timestamp.tzinfo is not None
    assert all(n > 0 for n in decoded.skipped.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=write_requests | st.binary(max_size=200), compressed=st.booleans())
def test_any_body_is_events_or_a_refusal(body: bytes, compressed: bool) -> None:
    _decode(bytes(cramjam.snappy.compress_raw(body)) if compressed and len(body) % 2 else body, compressed)


@settings(max_examples=100, deadline=None)
@given(body=write_requests, data=st.data())
def test_a_truncated_or_spoiled_request_is_events_or_a_refusal(body: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(body)))
    _decode(body[:cut], compressed=False)
    if body:
        at = data.draw(st.integers(0, len(body) - 1))
        _decode(body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1 :], compressed=False)
    packed = bytes(cramjam.snappy.compress_raw(body))
    _decode(packed[: data.draw(st.integers(0, len(packed)))], compressed=True)
