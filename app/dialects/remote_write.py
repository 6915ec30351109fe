"""Prometheus remote_write 1.0 (``POST /api/v1/write``): a snappy-compressed protobuf ``WriteRequest``.

The messages are Prometheus' own (prompb/remote.proto and prompb/types.proto, package
``prometheus``), compiled into :mod:`app.proto.prometheus` by scripts/protos.py at build time.

Each float sample becomes one metric event: ``metric`` is the series' ``__name__``, ``labels``
its other labels (``instance`` and ``job`` included), ``value`` and ``timestamp`` (milliseconds
to UTC) the sample's. ``host`` is the first of the labels ``host``, ``hostname``, ``instance``
and ``job`` that is set, else ``unknown``: what a host sets of itself wins over where it was
scraped from.

- Staleness markers (the NaN Prometheus writes when a series disappears) and other NaN or
  infinite samples carry no value the infrastructure stream takes: they are skipped, counted in
  ``gateway_ingest_skipped_values_total{dialect="remote_write",reason="stale"|"non_finite"}``.
- A request of metadata only (``WriteRequest.metadata``, or series without samples) is answered
  204 and adds nothing.
- Native histograms (``TimeSeries.histograms``, decoded as the ``Histogram`` messages they are)
  are not mapped: their sparse buckets have no metric event to become, and taking a series'
  float samples while dropping its histograms would lose data silently.
- A series carrying native histograms, more than 64 labels besides ``__name__``, a label over
  its size (as :class:`app.events.MetricIn` bounds them), no ``__name__`` or a label twice is
  refused: 400, its text naming the series. Prometheus does not retry a 4xx but for 429, so such
  a batch is dropped, and logged by Prometheus with that text.
- Remote-Write 2.0 (``Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request``)
  is answered 415, as its specification asks of a receiver without it: a 2.0 sender then falls
  back to 1.0 (``protobuf_message: prometheus.WriteRequest``).

Answers: 204 with an empty body, and ``X-Prometheus-Remote-Write-Samples-Written`` (the events
taken); refusals are one line of text, Prometheus' log shows it. 429 and 503 keep their
``Retry-After`` (whole seconds, as Prometheus reads it): Prometheus retries a 5xx, and a 429 when
``queue_config.retry_on_http_429`` is set. Prometheus always sends ``Content-Encoding: snappy``,
which the pipeline inflates; a body without a ``Content-Encoding`` is taken as snappy too, as
Prometheus' own receiver takes it.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from typing import Any, Final

import msgspec
from google.protobuf.message import DecodeError

from app import compression, events
from app.core import Refusal
from app.dialects.base import Accepted, Answer, Decoded, Limits, Request, bearer_or_basic
from app.proto.prometheus.remote_pb2 import WriteRequest
from app.proto.prometheus.types_pb2 import TimeSeries

PROTOBUF: Final = "application/x-protobuf"
TEXT: Final = "text/plain; charset=utf-8"
V1_MESSAGE: Final = "prometheus.WriteRequest"
V2_MESSAGE: Final = "io.prometheus.write.v2.Request"
SAMPLES_WRITTEN: Final = "X-Prometheus-Remote-Write-Samples-Written"
HOST_LABELS: Final = ("host", "hostname", "instance", "job")
# Prometheus' staleness marker: a NaN of its own bits (value.StaleNaN in Prometheus' model).
STALE_NAN: Final = 0x7FF0000000000002
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MAX_SERIES_TEXT: Final = 200


def _message(content_type: str) -> str:
    """The ``proto`` parameter of a Content-Type (``prometheus.WriteRequest`` when it has none)."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "proto":
            return value.strip().strip('"')
    return V1_MESSAGE


def _series_text(series: TimeSeries) -> str:
    """A series as PromQL writes it, ``name{label="value",...}``, cut short for a refusal."""
    name = next((label.value for label in series.labels if label.name == "__name__"), "")
    labels = ",".join(f'{label.name}="{label.value}"' for label in series.labels if label.name != "__name__")
    text = f"{name}{{{labels}}}"
    return text if len(text) <= _MAX_SERIES_TEXT else text[: _MAX_SERIES_TEXT - 3] + "..."


def _invalid(series: TimeSeries, why: str) -> Refusal:
    return Refusal(400, "invalid series", f"{_series_text(series)}: {why}")


def _series_event(series: TimeSeries) -> events.MetricIn:
    """The event every sample of ``series`` shares but for value and time, validated as MetricIn is."""
    labels: dict[str, str] = {}
    for label in series.labels:
        if label.name in labels:
            raise _invalid(series, f"the label {label.name!r} appears twice")
        labels[label.name] = label.value
    name = labels.pop("__name__", "")
    if not name:
        raise _invalid(series, "the series has no __name__ label")
    if len(labels) > events.MAX_LABELS:
        raise _invalid(series, f"{len(labels)} labels besides __name__, at most {events.MAX_LABELS} are taken")
    host = next((labels[key] for key in HOST_LABELS if labels.get(key)), "unknown")
    try:
        return msgspec.convert({"host": host, "metric": name, "value": 0.0, "labels": labels}, events.MetricIn)
    except msgspec.ValidationError as error:
        raise _invalid(series, str(error)) from None


def decode_write_request(body: bytes, limits: Limits, *, compressed: bool = True) -> Decoded:
    """The events of a ``WriteRequest`` (raises Refusal: 400, 413). ``compressed``: the body is
    still a snappy block (no Content-Encoding said so, and none was undone)."""
    if compressed:
        body = compression.unsnappy(body, limits.max_decompressed_bytes)
    try:
        request = WriteRequest.FromString(body)
    except DecodeError as error:
        raise Refusal(400, "malformed write request", str(error)) from None
    count = sum(len(series.samples) for series in request.timeseries)
    if count > limits.max_events:
        raise Refusal(
            413, "too many samples",
            f"the request holds {count} samples, at most {limits.max_events} are taken: lower max_samples_per_send",
        )
    samples: list[events.MetricIn] = []
    stale = non_finite = 0
    append, pack, unpack, isfinite = samples.append, struct.pack, struct.unpack, math.isfinite
    MetricIn, timedelta = events.MetricIn, dt.timedelta
    for series in request.timeseries:
        if series.histograms:
            raise _invalid(
                series,
                f"native histograms are not taken ({len(series.histograms)} in this series):"
                " set send_native_histograms: false",
            )
        if not series.samples:
            continue
        shared = _series_event(series)
        host, metric, labels = shared.host, shared.metric, shared.labels
        for sample in series.samples:
            value = sample.value
            if not isfinite(value):
                if unpack("<Q", pack("<d", value))[0] == STALE_NAN:
                    stale += 1
                else:
                    non_finite += 1
                continue
            try:
                timestamp = _EPOCH + timedelta(milliseconds=sample.timestamp)
            except OverflowError:
                raise _invalid(series, f"the timestamp {sample.timestamp} ms is out of range") from None
            append(MetricIn(host, metric, value, "", labels, timestamp))
    skipped = {reason: n for reason, n in (("stale", stale), ("non_finite", non_finite)) if n}
    return Decoded(samples, skipped=skipped)


class RemoteWrite:
    """The remote_write 1.0 route."""

    name = "remote_write"
    media_types = frozenset({PROTOBUF})

    def authorization(self, request: Request) -> str | None:
        return bearer_or_basic(request)

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        message = _message(request.headers.get("content-type", ""))
        if message != V1_MESSAGE:
            raise Refusal(
                415, "unsupported media type",
                f"proto={message} is not taken"
                + (": Remote-Write 2.0 is not supported, send 1.0 (protobuf_message: prometheus.WriteRequest)"
                   if message == V2_MESSAGE else f", only proto={V1_MESSAGE} (Remote-Write 1.0)"),
            )
        return decode_write_request(body, limits, compressed="content-encoding" not in request.headers)

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return Answer(204, b"", TEXT, {**accepted.headers, SAMPLES_WRITTEN: str(len(accepted.event_ids))})

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        return Answer(refusal.status, refusal.describe().encode() + b"\n", TEXT, refusal.headers)

    def operation(self) -> dict[str, Any]:
        text = {TEXT: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {
            "204": {
                "description": "taken; X-Prometheus-Remote-Write-Samples-Written counts the events",
                "headers": {SAMPLES_WRITTEN: {"schema": {"type": "integer"}}},
            }
        }
        for status, description in sorted(_REFUSALS.items()):
            responses[status] = {"description": description, "content": text}
        return {
            "post": {
                "summary": "Prometheus remote_write 1.0 (snappy-compressed WriteRequest); one event per float sample",
                "requestBody": {"required": True, "content": {PROTOBUF: {"schema": _BINARY}}},
                "responses": responses,
            }
        }


_BINARY: Final = {"type": "string", "format": "binary"}
_REFUSALS: Final = {
    "400": "malformed snappy or protobuf, or an invalid series (named); not retried by Prometheus",
    "401": "no valid API key (Bearer, or the password of basic_auth) when keys are configured",
    "408": "the body did not arrive in time",
    "413": "body, decompressed body or sample count over its limit",
    "415": "not application/x-protobuf, Remote-Write 2.0, or an unsupported Content-Encoding",
    "429": "over the rate limit; see Retry-After (retried with retry_on_http_429)",
    "503": "cannot take events now (buffer full, breaker open); see Retry-After",
}

REMOTE_WRITE = RemoteWrite()
