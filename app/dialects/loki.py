"""Grafana Loki's push API (``POST /loki/api/v1/push``): what Promtail, Grafana Alloy, the Loki
logging libraries and the Docker driver send.

Two encodings, as Loki takes them:

- JSON (``Content-Type: application/json``, gzip allowed as ``Content-Encoding``):
  ``{"streams": [{"stream": {labels}, "values": [["<ns timestamp>", "<line>", {metadata}?], ...]}]}``;
- protobuf (``application/x-protobuf``, or no Content-Type): a ``logproto.PushRequest``
  (:mod:`app.proto.loki.push_pb2`, compiled at build time by scripts/protos.py from Loki's own
  push.proto, module github.com/grafana/loki/pkg/push) compressed as a snappy block
  without a ``Content-Encoding`` header (one saying ``snappy`` is taken too); its stream labels are
  a label selector string (``{app="api", level="info"}``), parsed by ``promql-parser``.

Each line becomes one log event, all or nothing: its message is the line; its level the entry's
``level``, ``severity`` or ``detected_level`` structured metadata, else that stream label, else
INFO; its source the first of the labels ``service_name``, ``app``, ``job``, ``service`` and
``logger`` (python-logging-loki's) there is, else "loki"; its timestamp the entry's, to the
microsecond. The attributes keep the rest: ``labels`` (the stream's), ``structuredMetadata``
(the entry's, when it has some) and ``timestampNs``, the nanosecond timestamp exactly as sent.

Success is Loki's ``204`` without a body; a refusal is a plain-text body with its status (400,
413, 415, 429 and 503 with ``Retry-After``, as Loki answers): Promtail and Alloy retry a 429 or
a 5xx and drop a batch refused with another 4xx.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Any, Final

import msgspec
import promql_parser
from google.protobuf.message import DecodeError

from app import events, otlp
from app.compression import unsnappy
from app.core import Refusal
from app.dialects.base import JSON, Accepted, Answer, Decoded, Limits, Request
from app.proto.loki.push_pb2 import PushRequest

PROTOBUF: Final = "application/x-protobuf"
TEXT: Final = "text/plain; charset=utf-8"
MEDIA_TYPES: Final = frozenset({JSON, PROTOBUF, ""})
DEFAULT_SOURCE: Final = "loki"
SOURCE_LABELS: Final = ("service_name", "app", "job", "service", "logger")
LEVEL_NAMES: Final = ("level", "severity", "detected_level")
MAX_LABELS: Final = events.MAX_LABELS
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NANOSECONDS: Final = re.compile(r"[+-]?[0-9]{1,19}")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_INT64: Final = 2**63
# Timestamp seconds a datetime can hold: 0001-01-01 to 9999-12-31.
_MIN_SECONDS: Final = -62_135_596_800
_MAX_SECONDS: Final = 253_402_300_799


class _Stream(msgspec.Struct):
    stream: dict[str, str] = {}
    values: list[list[str | dict[str, str]]] = []


class _Push(msgspec.Struct):
    streams: list[_Stream] = []


_push_decoder: Final = msgspec.json.Decoder(_Push)


def bad_request(detail: str) -> Refusal:
    return Refusal(400, "bad request", detail)


def _timestamp(nanoseconds: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=nanoseconds // 1000)


def _check_labels(labels: dict[str, str], stream: int) -> None:
    if not labels:
        raise bad_request(f"stream {stream}: at least one label pair is required per stream")
    if len(labels) > MAX_LABELS:
        raise bad_request(f"stream {stream}: {len(labels)} labels, at most {MAX_LABELS}")
    for name in labels:
        if not _LABEL_NAME.fullmatch(name):
            raise bad_request(f"stream {stream}: invalid label name {name[:100]!r}")


def _log_event(labels: dict[str, str], line: str, nanoseconds: str, when: dt.datetime, metadata: dict[str, str]) -> events.LogIn:
    if not line:
        raise bad_request("an entry with an empty line")
    if len(metadata) > MAX_LABELS:
        raise bad_request(f"an entry with {len(metadata)} structured metadata pairs, at most {MAX_LABELS}")
    level = next((metadata[name] for name in LEVEL_NAMES if metadata.get(name)), None) or next(
        (labels[name] for name in LEVEL_NAMES if labels.get(name)), None
    )
    source = next((labels[name] for name in SOURCE_LABELS if labels.get(name)), DEFAULT_SOURCE)
    attributes: dict[str, Any] = {"labels": labels, "timestampNs": nanoseconds}
    if metadata:
        attributes["structuredMetadata"] = metadata
    return events.LogIn(
        source=source[:255],
        level=otlp.level(0, level) if level else "INFO",
        message=line,
        timestamp=when,
        attributes=attributes,
    )


def _check_count(count: int, max_events: int) -> None:
    if count > max_events:
        raise Refusal(413, "too many entries", f"a push holds at most {max_events} entries, this one has {count}")


def decode_json(body: bytes, max_events: int) -> list[events.LogIn]:
    """The log events of a JSON push."""
    try:
        body.decode()  # msgspec does not look at the keys it skips: every byte must be UTF-8
        push = _push_decoder.decode(body)
    except UnicodeDecodeError:
        raise bad_request("the body is not valid UTF-8") from None
    except msgspec.DecodeError as error:
        raise bad_request(f"malformed push request: {error}") from None
    except RecursionError:
        raise bad_request("malformed push request: nested too deeply") from None
    _check_count(sum(len(stream.values) for stream in push.streams), max_events)
    logs: list[events.LogIn] = []
    for number, stream in enumerate(push.streams):
        if not stream.values:
            continue
        # A label with an empty value is no label (Prometheus's rule, which Loki's labels follow).
        labels = {name: value for name, value in stream.stream.items() if value}
        _check_labels(labels, number)
        for entry in stream.values:
            if not 2 <= len(entry) <= 3:
                raise bad_request(f"stream {number}: an entry is [timestamp, line] or [timestamp, line, metadata]")
            nanoseconds, line, *rest = entry
            metadata = rest[0] if rest else {}
            if not isinstance(nanoseconds, str) or not isinstance(line, str) or not isinstance(metadata, dict):
                raise bad_request(f"stream {number}: an entry is [timestamp, line] or [timestamp, line, metadata]")
            if not _NANOSECONDS.fullmatch(nanoseconds) or not -_INT64 <= int(nanoseconds) < _INT64:
                raise bad_request(f"stream {number}: the timestamp {nanoseconds[:40]!r} is no nanosecond count")
            logs.append(_log_event(labels, line, nanoseconds, _timestamp(int(nanoseconds)), metadata))
    return logs


def parse_labels(text: str, stream: int) -> dict[str, str]:
    """A stream's label selector string (``{app="api", level="info"}``) as its labels."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        raise bad_request(f"stream {stream}: labels must be {{name=\"value\", ...}}")
    try:
        selector = promql_parser.parse(stripped)
    except ValueError as error:
        raise bad_request(f"stream {stream}: {error}") from None
    if (
        not isinstance(selector, promql_parser.VectorSelector)
        or selector.name is not None
        or selector.offset is not None
        or selector.at is not None
        or selector.matchers.or_matchers
        or any(matcher.op != promql_parser.MatchOp.Equal for matcher in selector.matchers.matchers)
    ):
        raise bad_request(f"stream {stream}: labels must be {{name=\"value\", ...}}")
    labels: dict[str, str] = {}
    for matcher in selector.matchers.matchers:
        if matcher.name in labels:
            raise bad_request(f"stream {stream}: duplicate label name {matcher.name[:100]!r}")
        if matcher.value:
            labels[matcher.name] = matcher.value
    _check_labels(labels, stream)
    return labels


def decode_protobuf(data: bytes, max_events: int) -> list[events.LogIn]:
    """The log events of a protobuf push (already inflated)."""
    try:
        push = PushRequest.FromString(data)
    except (DecodeError, RecursionError) as error:
        raise bad_request(f"malformed push request: {error}") from None
    _check_count(sum(len(stream.entries) for stream in push.streams), max_events)
    logs: list[events.LogIn] = []
    for number, stream in enumerate(push.streams):
        if not stream.entries:
            continue
        labels = parse_labels(stream.labels, number)
        for entry in stream.entries:
            seconds, nanos = entry.timestamp.seconds, entry.timestamp.nanos
            if not (0 <= nanos < 1_000_000_000 and _MIN_SECONDS <= seconds <= _MAX_SECONDS):
                raise bad_request(f"stream {number}: timestamp {seconds}s {nanos}ns out of range")
            nanoseconds = seconds * 1_000_000_000 + nanos
            metadata = {pair.name: pair.value for pair in entry.structuredMetadata}
            logs.append(_log_event(labels, entry.line, str(nanoseconds), _timestamp(nanoseconds), metadata))
    return logs


def authorization(request: Request) -> str | None:
    """``Authorization`` as sent; Basic credentials (what Loki clients send) give their password as the key."""
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "basic" and token.strip():
        try:
            _, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return value
        return f"Bearer {password}" if password else value
    return value


_REFUSALS: Final = {
    "400": "malformed push request (JSON, protobuf, snappy, gzip, labels, timestamps, an empty line)",
    "401": "no valid API key (when keys are configured)",
    "408": "the body did not arrive in time",
    "413": "body, decompressed body, entry count or an event over its limit",
    "415": "unsupported Content-Type or Content-Encoding",
    "429": "over the rate limit; see Retry-After",
    "500": "internal error",
    "503": "cannot take entries now (buffer full, breaker open); see Retry-After",
}


class Push:
    """``POST /loki/api/v1/push``: JSON or snappy-compressed protobuf, 204 once taken."""

    name = "loki"
    media_types = MEDIA_TYPES

    def authorization(self, request: Request) -> str | None:
        return authorization(request)

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        if request.media_type == JSON:
            return Decoded(decode_json(body, limits.max_events))
        # Loki's clients compress protobuf as a snappy block and say nothing; a body whose
        # Content-Encoding said snappy has been inflated by the pipeline already.
        if (request.headers.get("content-encoding") or "").strip().lower() != "snappy":
            body = unsnappy(body, limits.max_decompressed_bytes)
        return Decoded(decode_protobuf(body, limits.max_events))

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return Answer(204, b"", TEXT, accepted.headers)

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        status = 400 if refusal.status == 422 else refusal.status
        return Answer(status, (refusal.describe() + "\n").encode(), TEXT, refusal.headers)

    def operation(self) -> dict[str, Any]:
        text = {"text/plain": {"schema": {"type": "string"}}}
        entry = {"type": "array", "minItems": 2, "maxItems": 3, "items": {}}
        push = {
            "type": "object",
            "properties": {
                "streams": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "stream": {"type": "object", "additionalProperties": {"type": "string"}},
                            "values": {"type": "array", "items": entry},
                        },
                    },
                }
            },
        }
        responses: dict[str, Any] = {"204": {"description": "taken"}}
        for status, description in sorted(_REFUSALS.items()):
            responses[status] = {"description": description, "content": text}
        return {
            "post": {
                "summary": "Loki push: JSON, or a logproto.PushRequest as a snappy block; one event per line",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": push}, PROTOBUF: {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": responses,
            }
        }


PUSH = Push()
