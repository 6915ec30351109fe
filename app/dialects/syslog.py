"""Syslog, sans-IO: RFC 6587 framing of a TCP (or TLS) byte stream, RFC 5424 parsed strictly,
RFC 3164 leniently, and the mapping of a message onto an application log event.

Hand-written because no maintained parser exists on PyPI: ``syslog-rfc5424-parser`` (0.3.2,
November 2019, a lark grammar at about 230 µs a message) and ``syslogmp`` (0.4, April 2021,
RFC 3164 only) have had no release in years, and neither frames a TCP stream. This module is
pure: bytes in, messages and events out; :mod:`app.sockets.syslog` moves the bytes.

Framing (:class:`Framer`), decided for every message, never once per connection (a connection
may mix both, and a guess made on its first message split later ones: vectordotdev/vector#4852):

- a frame that starts with a digit run and a space is octet-counted (``MSG-LEN SP SYSLOG-MSG``,
  RFC 6587 §3.4.1; RFC 5425's only framing); a count above the limit is a :class:`FramingError`;
- anything else is non-transparent (§3.4.2): it ends at the first LF or NUL, a CR before the LF
  being dropped too (CRLF), and it may not grow past the limit without a trailer.

Parsing (:func:`parse`): ``<PRI>`` then a version digit and a space is RFC 5424 and must be
exactly that, else the line is kept whole as the message and the failure named; any other
``<PRI>`` line is RFC 3164 as rsyslog, syslog-ng, util-linux ``logger`` and Python's
``SysLogHandler`` send it (timestamp, host and tag each optional); no ``<PRI>`` at all is a failure.

Levels (:data:`LEVELS`): severity 0-2 (emerg, alert, crit) FATAL, 3 (err) ERROR, 4 (warning)
WARN, 5-6 (notice, info) INFO, 7 (debug) DEBUG.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Final

from app import events

DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024

SEVERITIES: Final = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
LEVELS: Final = ("FATAL", "FATAL", "FATAL", "ERROR", "WARN", "INFO", "INFO", "DEBUG")
FACILITIES: Final = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
)

_BOM: Final = b"\xef\xbb\xbf"
_MAX_COUNT_DIGITS: Final = 10  # a count of 10 digits is already far above any sane limit
_TRAILER: Final = re.compile(rb"[\n\x00]")
_NOT_COUNTED: Final = object()


class FramingError(Exception):
    """The byte stream cannot be framed any further: the connection must be closed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # a metric label: too_large


class Framer:
    """Frames of one TCP connection: ``receive_data`` the bytes read, then ``next_frame`` until None.

    The buffer never holds more than one frame's limit plus a count's digits beyond the frames
    not yet taken, as long as the caller takes them before it reads again.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._buffer = bytearray()
        self._start = 0  # where the next frame begins in the buffer
        self._scanned = 0  # how far a non-transparent frame was searched for its trailer already

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken as a frame."""
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        if self._start and self._start >= len(self._buffer) // 2:
            del self._buffer[: self._start]
            self._scanned -= self._start
            self._start = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole frame (without its count or trailer), or None until more bytes arrive."""
        buffer = self._buffer
        while True:
            start, end = self._start, len(buffer)
            if start >= end:
                return None
            first = buffer[start]
            if first in b"\n\x00" or (first == 0x0D and end > start + 1 and buffer[start + 1] == 0x0A):
                # An empty line between frames (a trailer after an octet-counted frame, say): nothing to keep.
                self._start = start + (2 if first == 0x0D else 1)
                self._scanned = self._start
                continue
            if 0x31 <= first <= 0x39:  # 1-9: perhaps MSG-LEN SP
                counted = self._counted(start, end)
                if counted is not _NOT_COUNTED:
                    return counted if isinstance(counted, bytes) else None
            return self._non_transparent(start, end)

    def _counted(self, start: int, end: int) -> bytes | object | None:
        """An octet-counted frame, None while its count or its bytes are incomplete, _NOT_COUNTED
        when the frame is no octet-counted one (a non-digit before the space)."""
        buffer = self._buffer
        position = start
        limit = min(end, start + _MAX_COUNT_DIGITS + 1)
        while position < limit and 0x30 <= buffer[position] <= 0x39:
            position += 1
        if position == end and position - start <= _MAX_COUNT_DIGITS:
            return None  # only digits so far: the space may follow
        if position - start > _MAX_COUNT_DIGITS or buffer[position] != 0x20:
            return _NOT_COUNTED
        count = int(buffer[start:position])
        if count > self._max:
            raise FramingError("too_large", f"an octet count of {count} is over the {self._max} bytes limit")
        body = position + 1
        if end - body < count:
            return None
        self._start = self._scanned = body + count
        return bytes(buffer[body : body + count])

    def _non_transparent(self, start: int, end: int) -> bytes | None:
        found = _TRAILER.search(self._buffer, max(start, self._scanned))
        if found is None:
            self._scanned = end
            if end - start > self._max:
                raise FramingError("too_large", f"a line of more than {self._max} bytes has no LF or NUL")
            return None
        stop = found.start()
        self._start = self._scanned = stop + 1
        if stop > start and self._buffer[stop - 1] == 0x0D and self._buffer[stop] == 0x0A:
            stop -= 1
        if stop - start > self._max:
            raise FramingError("too_large", f"a line of {stop - start} bytes is over the {self._max} bytes limit")
        return bytes(self._buffer[start:stop])

    def pending(self) -> int:
        """At the end of the stream: the bytes of a frame begun and never finished (0 when none)."""
        rest = bytes(self._buffer[self._start :])
        return len(rest.strip(b"\r\n\x00"))


def datagram_frame(datagram: bytes) -> bytes:
    """The message of one UDP datagram (RFC 5426: one per datagram), trailing LF, CR or NUL dropped."""
    return datagram.rstrip(b"\n\r\x00")


# -- parsing -------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One syslog message as parsed; ``error`` names why it is no RFC 5424 or 3164 message (then
    ``message`` is the whole line)."""

    format: str  # rfc5424, rfc3164, unparsed
    message: str
    facility: int = 1
    severity: int = 5
    timestamp: dt.datetime | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: dict[str, dict[str, str | list[str]]] = field(default_factory=dict)
    error: str | None = None


class ParseError(ValueError):
    """Why a line is not the syslog message it claims to be."""


_PRI: Final = re.compile(rb"<([0-9]{1,3})>")
_5424_HEAD: Final = re.compile(rb"<[0-9]{1,3}>[1-9][0-9]{0,2} ")
_5424_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?(Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_PRINTUSASCII: Final = re.compile(rb"[\x21-\x7e]+\Z")
# SD-NAME: 1 to 32 printable US-ASCII characters but '=', ']' and '"' (and space, not printable here)
_SD_NAME: Final = re.compile(rb'[\x21\x23-\x3c\x3e-\x5c\x5e-\x7e]{1,32}')


def parse(line: bytes, now: dt.datetime | None = None) -> Message:
    """The message of one frame; never raises. ``now`` (UTC) dates RFC 3164 timestamps, which have no year."""
    match = _PRI.match(line)
    if match is None:
        return _unparsed(line, "no <PRI> at the start")
    prival = int(match.group(1))
    if prival > 191 or (len(match.group(1)) > 1 and match.group(1)[0] == 0x30):
        return _unparsed(line, f"<{match.group(1).decode()}> is no PRI (0-191 without leading zeros)")
    if _5424_HEAD.match(line):
        try:
            return _parse_5424(line, prival)
        except ParseError as error:
            return _unparsed(line, f"RFC 5424: {error}")
    return _parse_3164(line[match.end() :], prival, now or dt.datetime.now(dt.timezone.utc))


def _unparsed(line: bytes, error: str) -> Message:
    return Message("unparsed", text(line), error=error)


def text(raw: bytes) -> str:
    """UTF-8, with bytes that are none kept visible as ``\\xNN`` escapes."""
    return raw.decode("utf-8", "backslashreplace")


def _parse_5424(line: bytes, prival: int) -> Message:
    header_end = line.index(b">") + 1
    fields = line[header_end:].split(b" ", 6)
    if len(fields) < 7:
        raise ParseError("the header needs VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID and STRUCTURED-DATA")
    version, timestamp, hostname, app_name, procid, msgid, rest = fields
    if version != b"1":
        raise ParseError(f"version {version.decode()} is not 1")
    message = Message("rfc5424", "", prival >> 3, prival & 7)
    message.timestamp = _timestamp_5424(timestamp)
    message.hostname = _header_field(hostname, "HOSTNAME", 255)
    message.app_name = _header_field(app_name, "APP-NAME", 48)
    message.procid = _header_field(procid, "PROCID", 128)
    message.msgid = _header_field(msgid, "MSGID", 32)
    sd_end = _structured_data(rest, message.structured_data)
    msg = rest[sd_end:]
    if msg:
        if msg[0] != 0x20:
            raise ParseError("STRUCTURED-DATA must be followed by a space or the end")
        # rsyslog's and syslog-ng's octet-counted frames count the LF their templates end with.
        msg = msg[1:].rstrip(b"\r\n")
    if msg.startswith(_BOM):
        try:
            message.message = msg[len(_BOM) :].decode("utf-8")
        except UnicodeDecodeError as error:
            raise ParseError(f"MSG begins with a BOM but is not UTF-8 ({error.reason} at {error.start})") from None
    else:
        message.message = text(msg)
    return message


def _header_field(raw: bytes, name: str, limit: int) -> str | None:
    if raw == b"-":
        return None
    if not raw or len(raw) > limit or not _PRINTUSASCII.match(raw):
        raise ParseError(f"{name} must be - or 1 to {limit} printable US-ASCII characters")
    return raw.decode("ascii")


def _timestamp_5424(raw: bytes) -> dt.datetime | None:
    if raw == b"-":
        return None
    match = _5424_TIMESTAMP.match(raw.decode("ascii", "replace"))
    if match is None:
        raise ParseError(f"TIMESTAMP {text(raw[:40])!r} is not an RFC 3339 date-time with an offset")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if offset == "Z":
        zone = dt.timezone.utc
    else:
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ParseError(f"TIMESTAMP offset {offset} is out of range")
        delta = dt.timedelta(hours=hours, minutes=minutes)
        zone = dt.timezone(-delta if offset[0] == "-" else delta)
    try:
        return dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "0").ljust(6, "0")), tzinfo=zone,
        )
    except ValueError as error:
        raise ParseError(f"TIMESTAMP: {error}") from None


def _structured_data(raw: bytes, into: dict[str, dict[str, str | list[str]]]) -> int:
    """Parse STRUCTURED-DATA at the start of ``raw`` into ``into``; where it ends."""
    if raw.startswith(b"-"):
        return 1
    position, end = 0, len(raw)
    if not raw.startswith(b"["):
        raise ParseError("STRUCTURED-DATA must be - or begin with [")
    while position < end and raw[position] == 0x5B:  # [
        sd_id, position = _sd_name(raw, position + 1, "SD-ID")
        if sd_id in into:
            raise ParseError(f"SD-ID {sd_id} appears twice")
        params: dict[str, str | list[str]] = {}
        while True:
            if position >= end:
                raise ParseError(f"SD-ELEMENT {sd_id} is not closed by ]")
            if raw[position] == 0x5D:  # ]
                position += 1
                break
            if raw[position] != 0x20:
                raise ParseError(f"SD-ELEMENT {sd_id}: a space or ] must follow its name or a parameter")
            name, position = _sd_name(raw, position + 1, "PARAM-NAME")
            if raw[position : position + 2] != b'="':
                raise ParseError(f'SD-PARAM {name} must be followed by ="')
            value, position = _param_value(raw, position + 2)
            previous = params.get(name)
            if previous is None:
                params[name] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                params[name] = [previous, value]
        into[sd_id] = params
    return position


def _sd_name(raw: bytes, position: int, what: str) -> tuple[str, int]:
    match = _SD_NAME.match(raw, position)
    if match is None:
        raise ParseError(f"{what} must be 1 to 32 printable US-ASCII characters but = ] \" and space")
    return match.group().decode("ascii"), match.end()


def _param_value(raw: bytes, position: int) -> tuple[str, int]:
    """A PARAM-VALUE from after its opening quote: ``\\"``, ``\\\\`` and ``\\]`` unescaped, any other
    backslash kept (RFC 5424 §6.3.3); the position after its closing quote."""
    out = bytearray()
    end = len(raw)
    while position < end:
        byte = raw[position]
        if byte == 0x5C and position + 1 < end and raw[position + 1] in b'"\\]':  # backslash
            out.append(raw[position + 1])
            position += 2
        elif byte == 0x22:  # "
            try:
                return out.decode("utf-8"), position + 1
            except UnicodeDecodeError:
                raise ParseError("a PARAM-VALUE is not UTF-8") from None
        elif byte == 0x5D:  # ] must be escaped inside a value
            raise ParseError("a ] inside a PARAM-VALUE must be escaped")
        else:
            out.append(byte)
            position += 1
    raise ParseError("a PARAM-VALUE is not closed by a quote")


_MONTHS: Final = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), start=1
)}
# "Oct 11 22:14:15", "Oct  1 22:14:15", with milliseconds ("22:14:15.123") or a year ("Oct 11 2023 22:14:15")
_BSD_TIMESTAMP: Final = re.compile(
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ 0-9][0-9]) (?:([0-9]{4}) )?"
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?(?: |\Z)"
)
# syslog-ng and rsyslog with an ISO timestamp in the legacy format
_ISO_TIMESTAMP: Final = re.compile(rb"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(?:Z|[+-][0-9]{2}:[0-9]{2}))(?: |\Z)")
# TAG: up to 48 characters without space, colon or brackets, an optional [PID], then a colon
_TAG: Final = re.compile(rb"([^\s:\[\]]{1,48})(?:\[([^\]\s]{1,128})\])?:(?: |\Z)")
_HOSTNAME: Final = re.compile(rb"([^\s\[\]:]{1,255})(?: |\Z)")


def _parse_3164(rest: bytes, prival: int, now: dt.datetime) -> Message:
    message = Message("rfc3164", "", prival >> 3, prival & 7)
    position = 0
    stamp = _BSD_TIMESTAMP.match(rest)
    if stamp is not None:
        message.timestamp = _bsd_time(stamp, now)
        position = stamp.end()
    else:
        iso = _ISO_TIMESTAMP.match(rest)
        if iso is not None:
            try:
                message.timestamp = _timestamp_5424(iso.group(1))
                position = iso.end()
            except ParseError:
                pass
    if position and not _TAG.match(rest, position):
        # After a timestamp comes the host, unless the tag follows at once (a local sender's form).
        host = _HOSTNAME.match(rest, position)
        if host is not None and host.end() < len(rest):
            message.hostname = host.group(1).decode("utf-8", "backslashreplace")
            position = host.end()
    tag = _TAG.match(rest, position)
    if tag is not None:
        message.app_name = tag.group(1).decode("utf-8", "backslashreplace")
        if tag.group(2) is not None:
            message.procid = tag.group(2).decode("utf-8", "backslashreplace")
        position = tag.end()
    message.message = text(rest[position:].rstrip(b"\r\n"))
    return message


def _bsd_time(stamp: re.Match[bytes], now: dt.datetime) -> dt.datetime | None:
    month_name, day, year, hour, minute, second, fraction = stamp.groups()
    month = _MONTHS[month_name]
    try:
        when = dt.datetime(
            int(year) if year else now.year, month, int(day), int(hour), int(minute), int(second),
            int((fraction or b"0").ljust(6, b"0")), tzinfo=dt.timezone.utc,
        )
    except ValueError:
        return None
    if not year and when - now > dt.timedelta(days=2):
        # Sent last December and read this January: the year a timestamp without one belongs to.
        try:
            when = when.replace(year=now.year - 1)
        except ValueError:
            return None
    return when


# -- events --------------------------------------------------------------------------------


def log_event(message: Message, peer: str | None, transport: str) -> events.LogIn:
    """The application log event of one message: source its app name, else its host, else ``syslog``."""
    attributes: dict[str, Any] = {"format": message.format, "transport": transport}
    if message.error is None:
        attributes["facility"] = FACILITIES[message.facility] if message.facility < len(FACILITIES) else message.facility
        attributes["severity"] = SEVERITIES[message.severity]
    for name, value in (
        ("host", message.hostname), ("app", message.app_name), ("procid", message.procid), ("msgid", message.msgid),
    ):
        if value is not None:
            attributes[name] = value
    if message.structured_data:
        attributes["structuredData"] = message.structured_data
    if message.error is not None:
        attributes["parseError"] = message.error
    if peer is not None:
        attributes["peer"] = peer
    source = (message.app_name or message.hostname or "syslog")[:255]
    return events.LogIn(
        source=source,
        level=LEVELS[message.severity],
        # LogIn needs a message: an empty MSG is the syslog NILVALUE.
        message=message.message or "-",
        timestamp=message.timestamp,
        attributes={"syslog": attributes},
    )
