"""The Fluentd forward protocol (v1), sans-IO: a connection's bytes in, its events and replies out.

Every carrier mode of the specification (fluent/fluentd wiki, Forward-Protocol-Specification-v1):
Message ``[tag, time, record, option?]``, Forward ``[tag, [[time, record], ...], option?]``,
PackedForward ``[tag, <entries as bin or str>, option?]`` and CompressedPackedForward (the same
entries gzipped, ``option.compressed == "gzip"``); time as integer seconds, a float, or EventTime
(msgpack ext type 0: seconds and nanoseconds, 32-bit big-endian each). With a shared key the
server opens with ``HELO`` and answers the client's ``PING`` with ``PONG`` before any event.

msgpack is decoded by msgspec. It has no streaming decoder, so :class:`Session` keeps what was
read in a buffer bounded by the message limit and tries to decode it into ``msgspec.Raw`` each
time bytes arrive: that skips over one value without building it (about 100 times cheaper than a
full decode), tells a truncated value from a whole one, and names the byte where a whole one
ends when more follow. Only a whole message is then decoded. Out_forward sends entries as msgpack
``str`` holding binary msgpack (its spec notes why), which no UTF-8 decoder takes: the second
element is kept as ``Raw`` and its payload cut out by its header.

Records become application log events: message from ``message`` (else ``log``; else the record
as JSON), level from ``level`` or ``severity``, source the tag, and in attributes the tag and
the rest of the record. An entry that is well-formed msgpack but no ``[time, record]`` pair, or
whose record cannot be an event, is dropped and counted (``Entries.dropped``): resending cannot
make it fit, and it must not hold back the rest of its chunk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from app import events, otlp
from app.compression import gunzip
from app.core import Refusal

DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
EVENT_TIME: Final = 0  # the msgpack ext type of EventTime

_TRAILING: Final = re.compile(r"trailing characters \(byte ([0-9]+)\)")
_LEVELS: Final = {"CRIT": "FATAL", "EMERG": "FATAL", "NOTICE": "INFO", "WARN": "WARN", "INFORMATION": "INFO"}
_SYSLOG_LEVELS: Final = ("FATAL", "FATAL", "FATAL", "ERROR", "WARN", "INFO", "INFO", "DEBUG")


class ProtocolError(Exception):
    """The connection's bytes cannot be taken any further: close it (``reason`` is a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # too_large, malformed, handshake, decompression


@dataclass(frozen=True, slots=True)
class EventTime:
    seconds: int
    nanoseconds: int

    def datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.seconds, dt.timezone.utc) + dt.timedelta(
            microseconds=self.nanoseconds // 1000
        )


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == EVENT_TIME and len(data) == 8:
        seconds, nanoseconds = struct.unpack(">II", data)
        return EventTime(seconds, nanoseconds)
    # Another extension type has no meaning here: kept as what it holds, so it can become JSON.
    return {"ext": code, "data": bytes(data)}


_decode: Final = msgspec.msgpack.Decoder(ext_hook=_ext_hook).decode
_decode_parts: Final = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
_skip: Final = msgspec.msgpack.Decoder(msgspec.Raw).decode
_encode: Final = msgspec.msgpack.encode
_encode_json: Final = msgspec.json.encode


def value_length(data: bytes | bytearray | memoryview) -> int | None:
    """The length of the first msgpack value of ``data``: None while it is truncated.

    Raises :class:`ProtocolError` when the bytes are no msgpack.
    """
    try:
        _skip(data)
    except msgspec.DecodeError as error:
        text = str(error)
        if "truncated" in text:
            return None
        trailing = _TRAILING.search(text)
        if trailing is None:
            raise ProtocolError("malformed", f"not msgpack: {text}") from None
        return int(trailing.group(1))
    except RecursionError:
        raise ProtocolError("malformed", "msgpack nested too deeply") from None
    return len(data)


# -- what a session hands back ---------------------------------------------------------------


@dataclass(slots=True)
class Entries:
    """The events of one forward message; ``chunk`` when the client wants ``{"ack": chunk}``."""

    tag: str
    events: list[events.LogIn]
    chunk: str | None = None
    dropped: int = 0  # entries that could not become events
    reasons: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Reply:
    """Bytes to send to the client (HELO, PONG); ``close`` after them (a failed handshake)."""

    data: bytes
    close: bool = False


@dataclass(slots=True)
class Ignored:
    """A message the protocol says to ignore (not an array, a heartbeat ``nil``)."""

    reason: str  # a metric label: heartbeat, not_an_array


Event = Entries | Reply | Ignored


def ack(chunk: str) -> bytes:
    """The answer a client that sent ``option.chunk`` waits for, once Kafka has its records."""
    return _encode({"ack": chunk})


class Session:
    """One forward connection: ``greeting()`` first, then ``receive_data`` and ``next_event`` until None."""

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_decompressed_bytes: int = 32 * 1024 * 1024,
        shared_key: str = "",
        hostname: str = "kafka-log-gateway",
        nonce: bytes | None = None,
    ) -> None:
        self._max = max_message_bytes
        self._max_decompressed = max_decompressed_bytes
        self._shared_key = shared_key.encode()
        self._hostname = hostname
        self._nonce = nonce if nonce is not None else os.urandom(16)
        self.authenticated = not shared_key
        self._buffer = bytearray()
        self._start = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def greeting(self) -> bytes | None:
        """HELO, when a shared key is set: the server speaks first."""
        if self.authenticated:
            return None
        return _encode(["HELO", {"nonce": self._nonce, "auth": b"", "keepalive": True}])

    def receive_data(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next message's meaning, or None until more bytes arrive (raises ProtocolError)."""
        if self._start >= len(self._buffer):
            return None
        with memoryview(self._buffer) as view:
            rest = view[self._start :]
            length = value_length(rest)
            if length is None:
                if len(rest) > self._max:
                    raise ProtocolError("too_large", f"a message of more than {self._max} bytes")
                return None
            if length > self._max:
                raise ProtocolError("too_large", f"a message of {length} bytes is over the {self._max} bytes limit")
            frame = bytes(rest[:length])
        self._start += length
        return self._message(frame)

    def _message(self, frame: bytes) -> Event:
        if frame[0] == 0xC0:
            return Ignored("heartbeat")
        first = frame[0]
        if not (0x90 <= first <= 0x9F or first in (0xDC, 0xDD)):
            if not self.authenticated:
                raise ProtocolError("handshake", "a message other than PING before the handshake")
            return Ignored("not_an_array")
        try:
            parts = _decode_parts(frame)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as error:
            raise ProtocolError("malformed", f"not a forward message: {error}") from None
        if not self.authenticated:
            return self._ping(parts)
        if not 2 <= len(parts) <= 4:
            raise ProtocolError("malformed", f"a forward message has 2 to 4 elements, not {len(parts)}")
        tag = _decode_value(parts[0])
        if not isinstance(tag, str):
            raise ProtocolError("malformed", "the tag is not a string")
        second = bytes(parts[1])
        kind = second[0]
        if _is_array(kind):  # Forward
            option = _option(parts[2:3])
            try:
                raws = _decode_parts(parts[1])
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as error:
                raise ProtocolError("malformed", f"not a forward message: {error}") from None
            return self._entries(tag, [_entry(raw) for raw in raws], option)
        if _is_str(kind) or _is_bin(kind):  # PackedForward, CompressedPackedForward
            option = _option(parts[2:3])
            payload = _payload(second)
            if option.get("compressed") == "gzip":
                try:
                    payload = gunzip(payload, self._max_decompressed)
                except Refusal as refusal:
                    raise ProtocolError("decompression", refusal.describe()) from None
            return self._entries(tag, _split_entries(payload), option)
        # Message: [tag, time, record, option?]
        if len(parts) < 3:
            raise ProtocolError("malformed", "a Message-mode message needs a time and a record")
        option = _option(parts[3:4])
        return self._entries(tag, [[_decode_value(parts[1]), _decode_value(parts[2])]], option)

    def _entries(self, tag: str, entries: list[Any], option: dict[str, Any]) -> Entries:
        chunk = option.get("chunk")
        result = Entries(tag, [], chunk if isinstance(chunk, str) and chunk else None)
        for entry in entries:
            try:
                result.events.append(log_event(tag, entry))
            except InvalidEntry as error:
                result.dropped += 1
                if len(result.reasons) < 5 and str(error) not in result.reasons:
                    result.reasons.append(str(error))
        return result

    def _ping(self, parts: list[msgspec.Raw]) -> Reply:
        values = [_decode_value(part) for part in parts]
        if len(values) != 6 or values[0] != "PING":
            raise ProtocolError("handshake", "expected PING after HELO")
        _, client_hostname, salt, digest, _username, _password = values
        if isinstance(salt, str):
            salt = salt.encode()
        if not (isinstance(client_hostname, str) and isinstance(salt, bytes) and isinstance(digest, str)):
            raise ProtocolError("handshake", "a PING of the wrong types")
        expected = hashlib.sha512(salt + client_hostname.encode() + self._nonce + self._shared_key).hexdigest()
        if digest != expected:
            pong = _encode(["PONG", False, "shared_key mismatch", self._hostname, ""])
            return Reply(pong, close=True)
        self.authenticated = True
        answer = hashlib.sha512(salt + self._hostname.encode() + self._nonce + self._shared_key).hexdigest()
        return Reply(_encode(["PONG", True, "", self._hostname, answer]))


def _decode_value(raw: msgspec.Raw | bytes) -> Any:
    try:
        return _decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as error:
        raise ProtocolError("malformed", f"not a forward message: {error}") from None


def _is_array(kind: int) -> bool:
    return 0x90 <= kind <= 0x9F or kind in (0xDC, 0xDD)


def _is_str(kind: int) -> bool:
    return 0xA0 <= kind <= 0xBF or kind in (0xD9, 0xDA, 0xDB)


def _is_bin(kind: int) -> bool:
    return kind in (0xC4, 0xC5, 0xC6)


def _payload(raw: bytes) -> bytes:
    """The bytes a msgpack str or bin holds, whatever they are (a str of binary msgpack, say)."""
    kind = raw[0]
    if 0xA0 <= kind <= 0xBF:
        return raw[1:]
    width = {0xD9: 1, 0xC4: 1, 0xDA: 2, 0xC5: 2, 0xDB: 4, 0xC6: 4}[kind]
    return raw[1 + width :]  # Raw holds exactly one value: the rest is its payload


def _option(parts: list[msgspec.Raw]) -> dict[str, Any]:
    if not parts:
        return {}
    option = _decode_value(parts[0])
    if option is None:
        return {}
    if not isinstance(option, dict):
        raise ProtocolError("malformed", "the option is not a map")
    return option


def _split_entries(stream: bytes) -> list[Any]:
    """The entries of a MessagePackEventStream: msgpack values one after the other."""
    entries: list[Any] = []
    position = 0
    with memoryview(stream) as view:
        while position < len(stream):
            rest = view[position:]
            length = value_length(rest)
            if length is None:
                raise ProtocolError("malformed", "the entries end inside an entry")
            entries.append(_entry(rest[:length]))
            position += length
    return entries


def _entry(raw: msgspec.Raw | memoryview) -> Any:
    try:
        return _decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _Undecodable


class _Undecodable:
    """An entry msgpack can frame but not decode (a str that is no UTF-8)."""


class InvalidEntry(ValueError):
    """An entry that cannot become a log event."""


# -- events ----------------------------------------------------------------------------------


def _timestamp(value: Any) -> dt.datetime | None:
    try:
        if isinstance(value, EventTime):
            return value.datetime()
        if isinstance(value, bool):
            raise InvalidEntry("the time is a boolean")
        if isinstance(value, (int, float)):
            return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise InvalidEntry("the time is out of range") from None
    raise InvalidEntry("the time is no integer, float or EventTime")


def _level(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return _SYSLOG_LEVELS[value]  # a syslog severity number
    if isinstance(value, str):
        upper = value.strip().upper()
        return _LEVELS.get(upper) or otlp.level(0, upper)
    return "INFO"


def log_event(tag: str, entry: Any) -> events.LogIn:
    """The log event of one ``[time, record]`` entry under ``tag`` (raises InvalidEntry)."""
    if entry is _Undecodable:
        raise InvalidEntry("an entry that is no valid msgpack (a string that is no UTF-8)")
    if not isinstance(entry, list) or len(entry) != 2:
        raise InvalidEntry("an entry is no [time, record] pair")
    time, record = entry
    if not isinstance(record, dict):
        raise InvalidEntry("a record is no map")
    timestamp = _timestamp(time)
    rest = dict(record)
    level: Any = None
    for key in ("level", "severity"):
        if key in rest:
            level = rest.pop(key)
            break
    message: Any = record  # a record without either field is the message, as JSON
    for key in ("message", "log"):
        if key in rest:
            message = rest.pop(key)
            break
    attributes: dict[str, Any] = {"tag": tag}
    if message is record:
        rest = {}
    if not isinstance(message, str):
        try:
            message = _encode_json(message).decode()
        except (TypeError, msgspec.EncodeError):
            raise InvalidEntry("a record that cannot be JSON") from None
    if rest:
        attributes["record"] = rest
    return events.LogIn(
        source=(tag or "forward")[:255],
        level=_level(level),
        message=message or "-",
        timestamp=timestamp,
        attributes={"forward": attributes},
    )
