"""Python's ``logging.handlers.HTTPHandler``: one ``LogRecord.__dict__`` per request, form-encoded.

Answered like the native single-event route: ``202 {"status": "accepted", "eventId": ...}``, or a
JSON error. The record's level, logger name, message (``msg % args`` when no Formatter set
``message``), time and a few of its fields become one log event.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
import urllib.parse
from typing import Any, Final

import msgspec

from app import events, otlp
from app.core import Refusal
from app.dialects.base import Accepted, Answer, Decoded, JSONDialect, Limits, Request, ingest_operation, json_answer
from app.dialects.native import refusal_of

FORM: Final = "application/x-www-form-urlencoded"

# LogRecord fields of Python's logging kept as attributes; integers are sent as their text.
_PYTHON_ATTRIBUTES: Final = ("pathname", "module", "funcName", "lineno", "process", "processName", "threadName")
_PYTHON_INTEGERS: Final = frozenset({"lineno", "process"})
_MAX_ARGS_CHARS: Final = 10_000
# A conversion with a 4-digit (or argument-given) width or precision: "%999999999d" would take a GB.
_WIDE_CONVERSION: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d{4,}|\d*\.(?:\*|\d{4,}))")


def _python_level(fields: dict[str, str]) -> str:
    try:
        number = int(fields.get("levelno", ""))
    except ValueError:
        return otlp.level(0, fields.get("levelname", ""))
    return otlp.SEVERITY_LEVELS[min(max(number // 10, 0), 5)] if number else "INFO"


def _python_message(fields: dict[str, str]) -> str | None:
    """``message`` when a Formatter set it; else ``msg % args``, the args being sent as their repr."""
    if fields.get("message"):
        return fields["message"]
    msg = fields.get("msg")
    args = fields.get("args", "None")
    if msg is None or args in ("None", "()", "{}") or len(args) > _MAX_ARGS_CHARS or _WIDE_CONVERSION.search(msg):
        return msg
    try:
        return str(msg % ast.literal_eval(args))
    except (ValueError, TypeError, SyntaxError, KeyError, MemoryError, RecursionError):
        return msg  # args that are no Python literal (objects' reprs) cannot be applied


def decode_python_log(body: bytes) -> events.LogIn:
    """One log event from the form ``logging.handlers.HTTPHandler`` posts: a LogRecord's ``__dict__``."""
    try:
        # strict: a value percent-encoding bytes that are no UTF-8 is refused, not turned into U+FFFD.
        fields = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=200, errors="strict"))
    except (UnicodeDecodeError, ValueError) as error:
        raise Refusal(400, "malformed form body", str(error)) from None
    event: dict[str, Any] = {"level": _python_level(fields)}
    if "name" in fields:
        event["source"] = fields["name"]
    message = _python_message(fields)
    if message is not None:
        event["message"] = message
    try:
        event["timestamp"] = dt.datetime.fromtimestamp(float(fields["created"]), dt.timezone.utc)
    except (KeyError, ValueError, OverflowError, OSError):
        pass  # stamped on receipt
    attributes: dict[str, Any] = {}
    for name in _PYTHON_ATTRIBUTES:
        if name in fields:
            value = fields[name]
            # isdecimal, not isdigit: "²" is a digit that int() refuses.
            attributes[name] = int(value) if name in _PYTHON_INTEGERS and value.isdecimal() else value
    for name in ("exc_text", "stack_info"):
        if fields.get(name) not in (None, "", "None"):
            attributes[name] = fields[name]
    if attributes:
        event["attributes"] = attributes
    try:
        return msgspec.convert(event, events.LogIn)
    except msgspec.ValidationError as error:
        raise events.InvalidEvents([{"message": str(error)}]) from None


_PYTHON_FORM_SCHEMA: Final = {
    "type": "object",
    "description": "a logging.LogRecord's __dict__, as logging.handlers.HTTPHandler posts it",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "msg": {"type": "string", "minLength": 1},
        **{
            name: {"type": "string"}
            for name in ("args", "levelname", "levelno", "created", "message", *_PYTHON_ATTRIBUTES)
        },
    },
    "required": ["name", "msg"],
}


class Form(JSONDialect):
    """The HTTPHandler route: one log event per request."""

    name = "httphandler"
    media_types = frozenset({FORM})

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        try:
            return Decoded([decode_python_log(body)])
        except events.InvalidEvents as error:
            raise refusal_of(error) from None

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        return json_answer({"status": "accepted", "eventId": accepted.event_ids[0]}, 202, accepted.headers)

    def operation(self) -> dict[str, Any]:
        return ingest_operation(
            "one record from Python's logging.handlers.HTTPHandler (method POST)",
            {FORM: {"schema": _PYTHON_FORM_SCHEMA}},
            "Accepted",
        )


FORM_LOGS = Form()
