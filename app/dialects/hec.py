"""Splunk's HTTP Event Collector (HEC): what Splunk logging libraries, forwarders and agents send.

Routes (see :mod:`app.shippers.application`):

- ``POST /services/collector``, ``/services/collector/event`` (and ``/event/1.0``): event
  objects one after the other (``{"event": ..., "time": ..., "host": ...}{...}``, whitespace
  between them or not, as HEC takes them), all or nothing;
- ``POST /services/collector/raw`` (and ``/raw/1.0``): lines of text, one event per non-blank
  line, their ``host``, ``source``, ``sourcetype`` and ``index`` in the query string;
- ``GET /services/collector/health`` (and ``/health/1.0``);
- ``POST /services/collector/ack``: the indexer acknowledgement of a channel's requests.

Credentials: ``Authorization: Splunk <token>`` (or ``Bearer``, or Basic with the token as the
password), the token being one of the gateway's API keys; any token passes while keys are off.

Answers are HEC's: ``200 {"text": "Success", "code": 0}`` (with ``ackId`` on a channel), and
HEC's error codes with their statuses: 2 "Token is required" (401), 3 "Invalid authorization"
(401), 4 "Invalid token" (403), 5 "No data", 6 "Invalid data format" (with
``invalid-event-number`` when an event is at fault), 7 "Incorrect index", 10 "Data channel is
missing", 11 "Invalid data channel", 12 "Event field is required", 13 "Event field cannot be
blank" (all 400), 8 "Internal server error" (500) and 9 "Server is busy" (503, with
``Retry-After``) for a full buffer, an open breaker and a rate limit alike: HEC has no 429, and
its clients retry a 503.

Indexer acknowledgement: a request that names a channel (``X-Splunk-Request-Channel``, or
``?channel=``) is answered with an ``ackId``, and ``POST /services/collector/ack`` with
``{"acks": [ids]}`` answers ``{"acks": {"<id>": true|false}}``: true once Kafka has every record
of that request (delivered to its topic, not dead-lettered nor lost), after which the id is
forgotten, as HEC does (asked again, it is false). The ids live in the process (:class:`AckRegistry`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from app import events, otlp
from app.core import Acknowledgement, Refusal
from app.dialects.base import JSON, Accepted, Answer, Decoded, Limits, Request

# HEC takes any Content-Type (curl's form default, text, none at all); these are what clients send.
MEDIA_TYPES: Final = frozenset(
    {"", JSON, "text/plain", "application/x-www-form-urlencoded", "application/x-ndjson", "application/octet-stream"}
)
DEFAULT_SOURCE: Final = "splunk-hec"
MAX_CHANNEL_CHARS: Final = 128
# Splunk's index names: lower-case letters, digits, "_" and "-", not starting with "_" or "-".
_INDEX: Final = re.compile(r"[a-z0-9][a-z0-9_\-]{0,79}")
_TRAILING: Final = re.compile(r"trailing characters \(byte (\d+)\)")
_LINES: Final = re.compile(r"[\r\n]+")
_MESSAGE_FIELDS: Final = ("message", "log", "msg")
_LEVEL_FIELDS: Final = ("level", "severity")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_encode: Final = msgspec.json.Encoder().encode


class HecError(Refusal):
    """A refusal with its HEC code (and the index of the event at fault, when one is)."""

    def __init__(
        self, status: int, code: int, text: str, *, event: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, text, None if event is None else f"event {event}", headers=headers)
        self.code = code
        self.event = event


def no_data() -> HecError:
    return HecError(400, 5, "No data")


def invalid_format(event: int | None = None) -> HecError:
    return HecError(400, 6, "Invalid data format", event=event)


class _Event(msgspec.Struct):
    """One event object of the event endpoint; ``event`` is checked apart (codes 12 and 13)."""

    event: Any = msgspec.UNSET
    time: float | str | None = None
    host: str | None = None
    source: str | None = None
    sourcetype: str | None = None
    index: str | None = None
    fields: dict[str, Any] | None = None


class _AckQuery(msgspec.Struct):
    acks: list[int]


_event_decoder: Final = msgspec.json.Decoder(_Event)
_ack_decoder: Final = msgspec.json.Decoder(_AckQuery)


# -- credentials, channel, query string --------------------------------------------------


def authorization(request: Request) -> str | None:
    """``Splunk <token>``, ``Bearer <token>`` or Basic with the token as password, as ``Bearer <token>``."""
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    scheme, token = scheme.lower(), token.strip()
    if scheme in ("splunk", "bearer") and token:
        return f"Bearer {token}"
    if scheme == "basic" and token:
        try:
            _, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return value
        return f"Bearer {password}" if password else value
    return value


def query_parameters(request: Request) -> dict[str, str]:
    """The query string's parameters; invalid UTF-8 (raw or percent-encoded) is code 6."""
    if not request.query:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(request.query.decode(), max_num_fields=50, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise invalid_format() from None
    return dict(pairs)


def channel_of(request: Request, query: dict[str, str]) -> str | None:
    """The request's channel (the header, else ``?channel=``); code 11 when it is out of bounds."""
    channel = request.headers.get("x-splunk-request-channel") or query.get("channel")
    if channel is None:
        return None
    if not 0 < len(channel) <= MAX_CHANNEL_CHARS or not channel.isprintable():
        raise HecError(400, 11, "Invalid data channel")
    return channel


# -- events ----------------------------------------------------------------------------------


def _objects(body: bytes) -> Iterator[_Event]:
    """The event objects of a body that holds several one after the other, each decoded by msgspec:
    a decode that stops at "trailing characters (byte n)" ends its object there, the next starts."""
    view = memoryview(body)
    start = index = 0
    while start < len(view):
        rest = view[start:]
        try:
            last = _event_decoder.decode(rest)
        except msgspec.ValidationError:
            raise invalid_format(index) from None
        except msgspec.DecodeError as error:
            found = _TRAILING.search(str(error))
            if found is None:
                if start == 0 and not body.strip():
                    return
                raise invalid_format(index) from None
            end = int(found[1]) - 1  # msgspec counts the bytes up to the first trailing one
        except RecursionError:
            raise invalid_format(index) from None
        else:
            yield last
            return
        try:
            item = _event_decoder.decode(rest[:end])
        except (msgspec.DecodeError, RecursionError):
            raise invalid_format(index) from None
        yield item
        start += end
        index += 1


def _timestamp(value: float | str | None, index: int) -> dt.datetime | None:
    if value is None:
        return None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
        return _EPOCH + dt.timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        raise invalid_format(index) from None


def _level(*candidates: Any) -> str:
    for candidate in candidates:
        if isinstance(candidate, dict):
            for name in _LEVEL_FIELDS:
                value = candidate.get(name)
                if isinstance(value, str) and value:
                    return otlp.level(0, value)
    return "INFO"


def _message(event: Any) -> tuple[str, dict[str, Any] | None]:
    """The message of an ``event``, and the rest of it when it is an object whose field gave it."""
    if isinstance(event, str):
        return event, None
    if isinstance(event, dict):
        for name in _MESSAGE_FIELDS:
            value = event.get(name)
            if isinstance(value, str) and value:
                rest = {key: item for key, item in event.items() if key != name}
                return value, rest or None
    return _encode(event).decode(), None


def _source(source: str | None, host: str | None, sourcetype: str | None) -> str:
    return (source or host or sourcetype or DEFAULT_SOURCE)[:255]


def _check_index(index: str | None, event: int | None) -> None:
    if index is not None and index != "" and not _INDEX.fullmatch(index):
        raise HecError(400, 7, "Incorrect index", event=event)


def _metadata(host: str | None, source: str | None, sourcetype: str | None, index: str | None) -> dict[str, Any]:
    return {
        name: value
        for name, value in (("host", host), ("source", source), ("sourcetype", sourcetype), ("index", index))
        if value
    }


def _log_event(index: int, item: _Event) -> events.LogIn:
    if item.event is msgspec.UNSET:
        raise HecError(400, 12, "Event field is required", event=index)
    if item.event is None or item.event == "":
        raise HecError(400, 13, "Event field cannot be blank", event=index)
    _check_index(item.index, index)
    message, rest = _message(item.event)
    attributes = _metadata(item.host, item.source, item.sourcetype, item.index)
    if item.fields:
        attributes["fields"] = item.fields
    if rest:
        attributes["event"] = rest
    return events.LogIn(
        source=_source(item.source, item.host, item.sourcetype),
        level=_level(item.fields, item.event),
        message=message,
        timestamp=_timestamp(item.time, index),
        attributes=attributes or None,
    )


def decode_events(body: bytes, max_events: int) -> list[events.LogIn]:
    """The log events of an event endpoint's body: every event object valid, or a HecError."""
    try:
        body.decode()  # msgspec does not look at the keys it skips: every byte must be UTF-8
    except UnicodeDecodeError:
        raise invalid_format() from None
    logs: list[events.LogIn] = []
    for index, item in enumerate(_objects(body)):
        if index >= max_events:
            raise HecError(413, 6, "Request entity too large")
        logs.append(_log_event(index, item))
    if not logs:
        raise no_data()
    return logs


def decode_raw(body: bytes, query: dict[str, str], max_events: int) -> list[events.LogIn]:
    """The log events of a raw endpoint's body: one per non-blank line, the query's metadata on each."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise invalid_format() from None
    host, source, sourcetype, index = (query.get(name) for name in ("host", "source", "sourcetype", "index"))
    _check_index(index, None)
    lines = [line for line in _LINES.split(text) if line.strip()]
    if not lines:
        raise no_data()
    if len(lines) > max_events:
        raise HecError(413, 6, "Request entity too large")
    attributes = _metadata(host, source, sourcetype, index) or None
    event_source = _source(source, host, sourcetype)
    return [
        events.LogIn(
            source=event_source, level="INFO", message=line, attributes=dict(attributes) if attributes else None
        )
        for line in lines
    ]


# -- indexer acknowledgement ---------------------------------------------------------------


class AckRegistry:
    """The indexer acknowledgements of one process: per channel, the ackId of each request not yet
    acknowledged, and its :class:`~app.core.Acknowledgement`.

    Bounded three ways, the oldest going first: ``max_per_channel`` ids a channel (its oldest id
    dropped), ``max_channels`` channels (the least recently used one dropped, with its ids) and
    ``max_pending`` ids in all (the oldest of the least recently used channel dropped). A dropped
    id is answered false, as an unknown one is: the client sends that request again, so nothing is
    lost (it may be duplicated). Ids are unique in the process, not only in their channel, so a
    channel dropped and used again never sees an id of its earlier life.
    """

    def __init__(self, *, max_channels: int = 1_000, max_per_channel: int = 10_000, max_pending: int = 100_000) -> None:
        self._channels: OrderedDict[str, OrderedDict[int, Acknowledgement]] = OrderedDict()
        self._next_id = 0
        self._pending = 0
        self.max_channels = max_channels
        self.max_per_channel = max_per_channel
        self.max_pending = max_pending

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def channels(self) -> int:
        return len(self._channels)

    def register(self, channel: str, acknowledgement: Acknowledgement) -> int:
        """A new ackId on ``channel`` for a request's acknowledgement."""
        pending = self._channels.get(channel)
        if pending is None:
            pending = self._channels[channel] = OrderedDict()
            while len(self._channels) > self.max_channels:
                _, dropped = self._channels.popitem(last=False)
                self._pending -= len(dropped)
        else:
            self._channels.move_to_end(channel)
        ack_id = self._next_id
        self._next_id += 1
        pending[ack_id] = acknowledgement
        self._pending += 1
        if len(pending) > self.max_per_channel:
            pending.popitem(last=False)
            self._pending -= 1
        while self._pending > self.max_pending:
            oldest_channel, oldest = next(iter(self._channels.items()))
            oldest.popitem(last=False)
            self._pending -= 1
            if not oldest:
                del self._channels[oldest_channel]
        return ack_id

    def query(self, channel: str, ack_ids: list[int]) -> dict[str, bool]:
        """Whether Kafka has all of each request's records; an id answered true is forgotten."""
        pending = self._channels.get(channel)
        answer: dict[str, bool] = {}
        for ack_id in ack_ids:
            key = str(ack_id)
            if key in answer:
                continue
            acknowledgement = pending.get(ack_id) if pending is not None else None
            answer[key] = acknowledgement is not None and acknowledgement.ok
            if answer[key]:
                assert pending is not None
                del pending[ack_id]
                self._pending -= 1
        if pending is not None:
            if pending:
                self._channels.move_to_end(channel)
            else:
                del self._channels[channel]
        return answer


# -- the dialects ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Submission:
    channel: str | None


def _hec_answer(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, _encode(payload), JSON, headers or {})


_SUCCESS_SCHEMA: Final = {
    "type": "object",
    "required": ["text", "code"],
    "properties": {"text": {"type": "string"}, "code": {"type": "integer"}, "ackId": {"type": "integer"}},
}
_ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["text", "code"],
    "properties": {
        "text": {"type": "string"},
        "code": {"type": "integer"},
        "invalid-event-number": {"type": "integer"},
    },
}
_REFUSALS: Final = {
    "400": "HEC codes 5, 6, 7, 10, 11, 12, 13 (with invalid-event-number when an event is at fault)",
    "401": "HEC codes 2 (no token) and 3 (not a Splunk, Bearer or Basic authorization), when keys are configured",
    "403": "HEC code 4: the token is no API key",
    "408": "HEC code 9: the body did not arrive in time",
    "413": "HEC code 6: body, decompressed body, event count or an event over its limit",
    "415": "HEC code 6: unsupported Content-Type or Content-Encoding",
    "500": "HEC code 8",
    "503": "HEC code 9, server is busy (buffer full, breaker open, rate limit); see Retry-After",
}


def _responses(success: str, schema: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": success, "content": {JSON: {"schema": schema}}}}
    for status, description in sorted(_REFUSALS.items()):
        responses[status] = {"description": description, "content": {JSON: {"schema": _ERROR_SCHEMA}}}
    return responses


class _Collector:
    """What the HEC routes share: credentials, HEC's answers and its refusals."""

    name = "hec"
    media_types = MEDIA_TYPES

    def authorization(self, request: Request) -> str | None:
        return authorization(request)

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        if isinstance(refusal, HecError):
            payload: dict[str, Any] = {"text": refusal.error, "code": refusal.code}
            if refusal.event is not None:
                payload["invalid-event-number"] = refusal.event
            return _hec_answer(refusal.status, payload, refusal.headers)
        status = refusal.status
        if status == 401:
            given = request.headers.get("authorization")
            if given is None:
                return _hec_answer(401, {"text": "Token is required", "code": 2}, {"WWW-Authenticate": "Splunk"})
            if not (authorization(request) or "").startswith("Bearer "):
                return _hec_answer(401, {"text": "Invalid authorization", "code": 3}, {"WWW-Authenticate": "Splunk"})
            return _hec_answer(403, {"text": "Invalid token", "code": 4})
        if status in (429, 503):
            return _hec_answer(503, {"text": "Server is busy", "code": 9}, refusal.headers)
        if status == 408:
            return _hec_answer(408, {"text": "Server is busy", "code": 9}, refusal.headers)
        if status == 413:
            return _hec_answer(413, {"text": "Request entity too large", "code": 6}, refusal.headers)
        if status >= 500:
            return _hec_answer(500, {"text": "Internal server error", "code": 8}, refusal.headers)
        # 400 (malformed gzip or snappy), 415, 422: the body is no HEC data.
        return _hec_answer(415 if status == 415 else 400, {"text": "Invalid data format", "code": 6}, refusal.headers)


class Events(_Collector):
    """The event endpoint (``/services/collector``, ``/services/collector/event``)."""

    def __init__(self, acks: AckRegistry) -> None:
        self.acks = acks

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        channel = channel_of(request, query_parameters(request))
        return Decoded(decode_events(body, limits.max_events), state=_Submission(channel), acknowledge=channel is not None)

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return _success(self.acks, decoded, accepted)

    def operation(self) -> dict[str, Any]:
        return {
            "post": {
                "summary": "Splunk HEC events: JSON event objects one after the other, all or nothing",
                "parameters": _CHANNEL_PARAMETERS,
                "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "string"}}}},
                "responses": _responses("taken (ackId when the request names a channel)", _SUCCESS_SCHEMA),
            }
        }


class Raw(_Collector):
    """The raw endpoint (``/services/collector/raw``): one event per non-blank line."""

    def __init__(self, acks: AckRegistry) -> None:
        self.acks = acks

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        query = query_parameters(request)
        channel = channel_of(request, query)
        return Decoded(decode_raw(body, query, limits.max_events), state=_Submission(channel), acknowledge=channel is not None)

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return _success(self.acks, decoded, accepted)

    def operation(self) -> dict[str, Any]:
        parameters = [
            *_CHANNEL_PARAMETERS,
            *({"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
              for name in ("host", "source", "sourcetype", "index")),
        ]
        return {
            "post": {
                "summary": "Splunk HEC raw data: one event per non-blank line, metadata in the query string",
                "parameters": parameters,
                "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": _responses("taken (ackId when the request names a channel)", _SUCCESS_SCHEMA),
            }
        }


def _success(acks: AckRegistry, decoded: Decoded, accepted: Accepted) -> Answer:
    payload: dict[str, Any] = {"text": "Success", "code": 0}
    submission: _Submission = decoded.state
    if submission.channel is not None and accepted.acknowledgement is not None:
        payload["ackId"] = acks.register(submission.channel, accepted.acknowledgement)
    return _hec_answer(200, payload, accepted.headers)


class Ack(_Collector):
    """``POST /services/collector/ack``: ``{"acks": [ids]}`` of the request's channel."""

    def __init__(self, acks: AckRegistry) -> None:
        self.acks = acks

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        channel = channel_of(request, query_parameters(request))
        if channel is None:
            raise HecError(400, 10, "Data channel is missing")
        if not body.strip():
            raise no_data()
        try:
            body.decode()  # as for events: the keys msgspec skips are UTF-8 too
            query = _ack_decoder.decode(body)
        except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
            raise invalid_format() from None
        if len(query.acks) > limits.max_events:
            raise HecError(413, 6, "Request entity too large")
        return Decoded([], state=(channel, query.acks))

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        channel, ack_ids = decoded.state
        return _hec_answer(200, {"acks": self.acks.query(channel, ack_ids)})

    def operation(self) -> dict[str, Any]:
        query = {"type": "object", "required": ["acks"], "properties": {"acks": {"type": "array", "items": {"type": "integer"}}}}
        statuses = {"type": "object", "properties": {"acks": {"type": "object", "additionalProperties": {"type": "boolean"}}}}
        return {
            "post": {
                "summary": "Splunk HEC indexer acknowledgement: which of a channel's ackIds Kafka has",
                "parameters": _CHANNEL_PARAMETERS,
                "requestBody": {"required": True, "content": {JSON: {"schema": query}}},
                "responses": _responses("true for each id whose records Kafka has (forgotten once answered true)", statuses),
            }
        }


class Health(_Collector):
    """``GET /services/collector/health``: ``{"text": "HEC is healthy", "code": 17}``."""

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        return Decoded([])

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return _hec_answer(200, {"text": "HEC is healthy", "code": 17})

    def operation(self) -> dict[str, Any]:
        return {"get": {"summary": "Splunk HEC health", "responses": _responses("healthy (code 17)", _SUCCESS_SCHEMA)}}


_CHANNEL_PARAMETERS: Final = [
    {"name": "X-Splunk-Request-Channel", "in": "header", "required": False, "schema": {"type": "string", "maxLength": MAX_CHANNEL_CHARS}},
    {"name": "channel", "in": "query", "required": False, "schema": {"type": "string", "maxLength": MAX_CHANNEL_CHARS}},
]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The HEC routes' dialects, sharing one process's acknowledgements."""

    events: Events
    raw: Raw
    ack: Ack
    health: Health


def endpoints(acks: AckRegistry | None = None) -> Endpoints:
    acks = acks or AckRegistry()
    return Endpoints(Events(acks), Raw(acks), Ack(acks), Health())
