"""Elasticsearch's ``_bulk`` API: NDJSON action and source lines, answered item by item as
Elasticsearch answers them, so its clients (elasticsearch-py's ``helpers.bulk``, rsyslog's
``omelasticsearch``, syslog-ng's ``elasticsearch-http()``) can ship logs to the gateway.

``index`` and ``create`` actions become log events; ``delete`` and ``update`` are refused in
their item (400 ``illegal_argument_exception``), as is a document that is no JSON object. A line
that is no JSON, or an action line of the wrong form, refuses the whole request (400 in
Elasticsearch's error shape). Every answer, refusals included, carries ``X-Elastic-Product``,
which the official clients check.

A source document becomes one log event:

- message: ``message``, else ``log``, else ``@message`` (the first non-empty string); else the
  whole document as JSON text (the attributes then hold only ``_index`` and ``_id``);
- level: the first of ``level``, ``log.level`` (a dotted key, or ``{"log": {"level": ...}}``)
  and ``severity`` that names a level (syslog's names too: ``err``, ``crit``, ``emerg``...);
  none: INFO, and the field stays in the attributes;
- source: ``host.name``, else ``host`` (a string), else ``service.name``, else the index;
- timestamp: ``@timestamp`` as RFC 3339 or epoch milliseconds; else the time of receipt (an
  unreadable ``@timestamp`` stays in the attributes);
- attributes: ``_index``, the client's ``_id`` when it gave one, and the fields not taken above.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from app import events
from app.core import Refusal
from app.dialects.base import JSON, NDJSON, Accepted, Answer, Decoded, Limits, Request

# The media types Elasticsearch 8 and 9 clients send in compatibility mode.
VND_JSON: Final = "application/vnd.elasticsearch+json"
VND_NDJSON: Final = "application/vnd.elasticsearch+x-ndjson"
PRODUCT_HEADERS: Final = {"X-Elastic-Product": "Elasticsearch"}

SERVED_ACTIONS: Final = frozenset({"index", "create"})
REFUSED_ACTIONS: Final = frozenset({"delete", "update"})
MAX_INDEX_CHARS: Final = 255  # Elasticsearch's bound on an index name, and the event's on its source
MAX_ID_BYTES: Final = 512  # Elasticsearch's bound on a document id

_encode: Final = msgspec.json.Encoder().encode
_any: Final = msgspec.json.Decoder()
# Decoded whole, not as Raw: a field the metadata ignores must be valid UTF-8 too.
_action_line: Final = msgspec.json.Decoder(dict[str, Any])

# Error types Elasticsearch answers with, for the refusals the pipeline raises.
_STATUS_TYPES: Final = {
    400: "parse_exception",
    401: "security_exception",
    403: "security_exception",
    408: "elasticsearch_timeout_exception",
    413: "content_too_long_exception",
    415: "media_type_header_exception",
    422: "illegal_argument_exception",
    429: "es_rejected_execution_exception",
    503: "unavailable_shards_exception",
}

# Level names as loggers and syslog spell them, upper-cased.
LEVEL_NAMES: Final = {
    **{level: level for level in events.LEVELS},
    "WARNING": "WARN",
    "ERR": "ERROR",
    "SEVERE": "ERROR",
    "CRIT": "FATAL",
    "CRITICAL": "FATAL",
    "ALERT": "FATAL",
    "EMERG": "FATAL",
    "EMERGENCY": "FATAL",
    "PANIC": "FATAL",
    "NOTICE": "INFO",
    "INFORMATION": "INFO",
    "INFORMATIONAL": "INFO",
}


class ElasticError(Refusal):
    """A refusal with Elasticsearch's own error type (``x_content_parse_exception``...)."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(status, kind, reason)


def error_document(status: int, kind: str, reason: str) -> dict[str, Any]:
    """Elasticsearch's whole-request error: ``{"error": {"root_cause": [...], ...}, "status": ...}``."""
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def elastic_answer(request: Request, status: int, document: Any, content_type: str = JSON) -> Answer:
    """An answer with the product header (no body for HEAD)."""
    if request.method == "HEAD":
        body = b""
    else:
        body = document if isinstance(document, bytes) else _encode(document)
    return Answer(status, body, content_type, PRODUCT_HEADERS)


class ElasticDialect:
    """What every Elasticsearch route shares: its clients' credentials and Elasticsearch's refusals."""

    def authorization(self, request: Request) -> str | None:
        """``ApiKey <key>``, ``Bearer <key>`` or Basic credentials whose password is the key."""
        value = request.headers.get("authorization")
        if value is None:
            return None
        scheme, _, credentials = value.strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "apikey":
            return f"Bearer {credentials}"
        if scheme == "basic":
            try:
                _, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, ValueError):
                return value
            return f"Bearer {password}"
        return value

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        if isinstance(refusal, ElasticError):
            kind, reason = refusal.error, str(refusal.detail)
        else:
            kind, reason = _STATUS_TYPES.get(refusal.status, "exception"), refusal.describe()
        answer = elastic_answer(request, refusal.status, error_document(refusal.status, kind, reason))
        return Answer(answer.status, answer.body, answer.content_type, {**refusal.headers, **PRODUCT_HEADERS})


# -- decoding -------------------------------------------------------------------------------


class _Metadata(msgspec.Struct):
    """An action's metadata; the other fields (``_type``, ``pipeline``, ``routing``...) are ignored."""

    index: str | None = msgspec.field(default=None, name="_index")
    id: str | int | None = msgspec.field(default=None, name="_id")


@dataclass(frozen=True, slots=True)
class Item:
    """One action of a bulk request: an event (``error`` None) or its refusal (status, type, reason)."""

    action: str
    index: str | None
    id: str | None
    error: tuple[int, str, str] | None = None


@dataclass(frozen=True, slots=True)
class Bulk:
    """What the answer needs: every item in request order, and when decoding began (for ``took``)."""

    items: list[Item]
    started: float


def _malformed(line: int, reason: str) -> ElasticError:
    return ElasticError(400, "illegal_argument_exception", f"Malformed action/metadata line [{line}], {reason}")


def _json(line: bytes, number: int) -> Any:
    try:
        return _any.decode(line)
    except UnicodeDecodeError as error:
        raise ElasticError(400, "x_content_parse_exception", f"[{number}] the line is not valid UTF-8: {error}") from None
    except RecursionError:
        raise ElasticError(400, "x_content_parse_exception", f"[{number}] the JSON is nested too deeply") from None
    except msgspec.DecodeError as error:
        raise ElasticError(400, "x_content_parse_exception", f"[{number}] {error}") from None


def _action(line: bytes, number: int) -> tuple[str, _Metadata]:
    try:
        fields = _action_line.decode(line)
        if len(fields) != 1:
            raise _malformed(number, f"expected one action, found {len(fields)}")
        [(action, metadata)] = fields.items()
        if action not in SERVED_ACTIONS and action not in REFUSED_ACTIONS:
            raise _malformed(number, f"expected one of [create, delete, index, update] but found [{action}]")
        return action, msgspec.convert(metadata, _Metadata)
    except msgspec.ValidationError as error:
        raise _malformed(number, str(error)) from None
    except (UnicodeDecodeError, RecursionError, msgspec.DecodeError):
        _json(line, number)  # raises the line's error
        raise _malformed(number, "expected a JSON object") from None


def decode_bulk(body: bytes, default_index: str | None, max_actions: int) -> tuple[list[events.LogIn], list[Item]]:
    """The events of a bulk body and every item in order; ElasticError for a malformed request."""
    lines = [(number, line) for number, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    if not lines:
        raise ElasticError(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
    logs: list[events.LogIn] = []
    items: list[Item] = []
    position = 0
    while position < len(lines):
        number, line = lines[position]
        position += 1
        action, metadata = _action(line, number)
        if len(items) == max_actions:
            raise ElasticError(413, "content_too_long_exception", f"a bulk request holds at most {max_actions} actions")
        source: Any = None
        if action != "delete":
            if position == len(lines):
                reason = f"the {action} action of line [{number}] has no source line"
                raise ElasticError(400, "illegal_argument_exception", reason)
            source = _json(lines[position][1], lines[position][0])
            position += 1
        index = metadata.index if metadata.index is not None else default_index
        client_id = str(metadata.id) if metadata.id is not None else None
        problem = _problem(action, index, client_id, source)
        if problem is not None:
            items.append(Item(action, index, client_id, problem))
            continue
        assert index is not None
        logs.append(log_event(source, index, client_id))
        items.append(Item(action, index, client_id))
    return logs, items


_JSON_TYPES: Final = {
    type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
}


def _problem(action: str, index: str | None, client_id: str | None, source: Any) -> tuple[int, str, str] | None:
    if action in REFUSED_ACTIONS:
        return 400, "illegal_argument_exception", f"the gateway takes index and create actions, not {action}"
    if not index:
        return 400, "action_request_validation_exception", "Validation Failed: 1: index is missing;"
    if len(index) > MAX_INDEX_CHARS:
        return 400, "invalid_index_name_exception", f"index name is longer than {MAX_INDEX_CHARS} characters"
    if client_id is not None and not 0 < len(client_id.encode()) <= MAX_ID_BYTES:
        return 400, "illegal_argument_exception", f"an _id has 1 to {MAX_ID_BYTES} bytes"
    if not isinstance(source, dict):
        return 400, "document_parsing_exception", f"the document must be a JSON object, not {_JSON_TYPES[type(source)]}"
    return None


# -- mapping --------------------------------------------------------------------------------


def _take(document: dict[str, Any], path: tuple[str, ...], wanted: Callable[[Any], Any]) -> Any:
    """``wanted(value)`` of the first field at ``path`` (a dotted key, or nested objects) it accepts
    (not None); that field is removed, and a parent object it leaves empty."""
    dotted = ".".join(path)
    if dotted in document:
        found = wanted(document[dotted])
        if found is not None:
            del document[dotted]
            return found
    if len(path) == 2:
        parent = document.get(path[0])
        if isinstance(parent, dict) and path[1] in parent:
            found = wanted(parent[path[1]])
            if found is not None:
                del parent[path[1]]
                if not parent:
                    del document[path[0]]
                return found
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_INDEX_CHARS else None


def level_of(value: Any) -> str | None:
    """The gateway's level for a level field's value, or None when it names none."""
    return LEVEL_NAMES.get(value.strip().upper()) if isinstance(value, str) else None


def timestamp_of(value: Any) -> dt.datetime | None:
    """``@timestamp`` as Elasticsearch's default date format reads it: RFC 3339, or epoch milliseconds."""
    if isinstance(value, str):
        try:
            return msgspec.convert(value, dt.datetime)
        except msgspec.ValidationError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc) if math.isfinite(value) else None
        except (OverflowError, OSError, ValueError):
            return None
    return None


_Path = tuple[str, ...]
_MESSAGE_FIELDS: Final[tuple[_Path, ...]] = (("message",), ("log",), ("@message",))
_LEVEL_FIELDS: Final[tuple[_Path, ...]] = (("level",), ("log", "level"), ("severity",))
_SOURCE_FIELDS: Final[tuple[_Path, ...]] = (("host", "name"), ("host",), ("service", "name"))


def log_event(document: dict[str, Any], index: str, client_id: str | None) -> events.LogIn:
    """The log event of one source document (``document`` is consumed)."""
    message: str | None = None
    for path in _MESSAGE_FIELDS:
        message = _take(document, path, _text)
        if message is not None:
            break
    whole = None
    if message is None:
        whole = message = _encode(document).decode()
    level = "INFO"
    for path in _LEVEL_FIELDS:
        found = _take(document, path, level_of)
        if found is not None:
            level = found
            break
    source = index
    for path in _SOURCE_FIELDS:
        found = _take(document, path, _name)
        if found is not None:
            source = found
            break
    timestamp = _take(document, ("@timestamp",), timestamp_of)
    attributes: dict[str, Any] = {} if whole is not None else document
    attributes["_index"] = index
    if client_id is not None:
        attributes["_id"] = client_id
    return events.LogIn(source, level, message, timestamp, attributes)


# -- the dialect ----------------------------------------------------------------------------

_ERROR_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "reason": {"type": "string"}, "root_cause": {"type": "array"}},
            "required": ["type", "reason"],
        },
        "status": {"type": "integer"},
    },
    "required": ["error", "status"],
}
_ITEM_SCHEMA: Final = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": {
        "type": "object",
        "properties": {
            "_index": {"type": ["string", "null"]},
            "_id": {"type": ["string", "null"]},
            "status": {"type": "integer"},
            "result": {"type": "string"},
            "error": {"type": "object"},
        },
        "required": ["status"],
    },
}
_BULK_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "took": {"type": "integer"},
        "errors": {"type": "boolean"},
        "items": {"type": "array", "items": _ITEM_SCHEMA},
    },
    "required": ["took", "errors", "items"],
}
REFUSALS: Final = {
    "400": "a line that is no JSON, or an action line of the wrong form",
    "401": "no valid API key (when keys are configured): ApiKey, Bearer or Basic with the key as password",
    "408": "the body did not arrive in time",
    "413": "body, decompressed body, number of actions or an event over its limit",
    "415": "unsupported Content-Type or Content-Encoding",
    "429": "over the rate limit (es_rejected_execution_exception); see Retry-After",
    "500": "an unexpected error",
    "503": "cannot take events now (buffer full, breaker open); see Retry-After",
}


def path_parameters(*names: str) -> list[dict[str, Any]]:
    """OpenAPI path parameters: ``{index}`` and ``{name}`` segments."""
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names]


def refusal_responses(refusals: dict[str, str]) -> dict[str, Any]:
    """OpenAPI responses for refusals in Elasticsearch's error shape."""
    return {
        status: {"description": description, "content": {JSON: {"schema": _ERROR_SCHEMA}}}
        for status, description in sorted(refusals.items())
    }


class BulkDialect(ElasticDialect):
    """``_bulk`` with ``index`` and ``create`` actions; the path's ``{index}`` (with ``indexed``) is the default index."""

    name = "elasticsearch"
    media_types = frozenset({JSON, NDJSON, VND_JSON, VND_NDJSON})

    def __init__(self, method: str, *, indexed: bool = False) -> None:
        self._method = method
        self._indexed = indexed

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        started = time.perf_counter()
        logs, items = decode_bulk(body, request.params.get("index"), limits.max_events)
        return Decoded(logs, state=Bulk(items, started))

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        bulk: Bulk = decoded.state
        event_ids = iter(accepted.event_ids)
        answered: list[dict[str, Any]] = []
        errors = False
        sequence = 0
        for item in bulk.items:
            if item.error is None:
                event_id = next(event_ids)
                answered.append({item.action: {
                    "_index": item.index, "_id": item.id if item.id is not None else event_id, "_version": 1,
                    "result": "created", "_shards": {"total": 1, "successful": 1, "failed": 0},
                    "_seq_no": sequence, "_primary_term": 1, "status": 201,
                }})
                sequence += 1
            else:
                errors = True
                status, kind, reason = item.error
                error = {"type": kind, "reason": reason}
                answered.append({item.action: {"_index": item.index, "_id": item.id, "status": status, "error": error}})
        took = int((time.perf_counter() - bulk.started) * 1000)
        answer = elastic_answer(request, 200, {"took": took, "errors": errors, "items": answered})
        return Answer(answer.status, answer.body, answer.content_type, {**accepted.headers, **PRODUCT_HEADERS})

    def operation(self) -> dict[str, Any]:
        body = {media: {"schema": {"type": "string"}} for media in (NDJSON, JSON)}
        responses: dict[str, Any] = {
            "200": {"description": "every item's outcome, in request order", "content": {JSON: {"schema": _BULK_SCHEMA}}},
            **refusal_responses(REFUSALS),
        }
        operation: dict[str, Any] = {
            "summary": "Elasticsearch _bulk: index and create actions as log events, one item answer each",
            "requestBody": {"required": True, "content": body},
            "responses": responses,
        }
        if self._indexed:
            operation["parameters"] = path_parameters("index")
        return {self._method.lower(): operation}


POST: Final = BulkDialect("POST")
PUT: Final = BulkDialect("PUT")
INDEX_POST: Final = BulkDialect("POST", indexed=True)
INDEX_PUT: Final = BulkDialect("PUT", indexed=True)
