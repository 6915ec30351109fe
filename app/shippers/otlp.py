"""OTLP/HTTP routes (``/v1/logs``, ``/v1/metrics``): the JSON routes' admission, limits and Submitter,
answered in the protocol's terms.

Success is 200 with the signal's export response (``partial_success`` counting the records that
could not become events); a refusal is a ``google.rpc.Status`` body, both in the request's
encoding. 429 and 503 keep their ``Retry-After``: OTLP's signal to wait that long before retrying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from google.protobuf.message import Message
from quart import Response, request
from werkzeug.exceptions import HTTPException

from app import otlp
from app.admission import Admission
from app.config import Settings
from app.http.body import media_type, read_body
from app.http.errors import HTTPError
from app.kafka.producer import Record
from app.observability.tracing import TraceContext
from app.shippers.ingest import Submitter, request_span, request_trace

MEDIA_TYPES = (otlp.PROTOBUF, otlp.JSON)


class Prepared(NamedTuple):
    """A decoded export: how many events it holds, their records, and the answer once they are taken."""

    events: int
    records: Callable[[TraceContext], list[Record]]
    response: Message


# Decodes and maps one export request (body, media type, max records), raising otlp's errors.
Prepare = Callable[[bytes, str, int], Prepared]


class OTLPRoute:
    """One OTLP/HTTP export route feeding a shipper's Submitter."""

    def __init__(self, settings: Settings, submitter: Submitter, admission: Admission, prepare: Prepare) -> None:
        self._settings = settings
        self._submitter = submitter
        self._admission = admission
        self._prepare = prepare

    async def post(self) -> Response:
        requested = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        # A refusal is answered in the request's encoding; JSON when that is not one of OTLP's.
        answer_type = otlp.PROTOBUF if requested == otlp.PROTOBUF else otlp.JSON
        try:
            key = self._admission.authenticate(request.headers.get("Authorization"))
            kind = media_type(request, MEDIA_TYPES)
            body = await read_body(
                request,
                max_bytes=self._settings.max_request_bytes,
                max_decompressed_bytes=self._settings.max_decompressed_bytes,
            )
            try:
                prepared = self._prepare(body, kind, self._settings.max_batch_events)
            except otlp.InvalidExport as error:
                raise HTTPError(400, "malformed export request", str(error)) from None
            except otlp.TooManyRecords as error:
                raise HTTPError(413, "too many events", str(error)) from None
            trace = request_trace()
            if prepared.events:
                self._admission.admit(key, prepared.events)
                self._submitter.send(prepared.records(trace), request_span())
        except HTTPError as error:
            return _status_response(error.status, _describe(error), answer_type, error.headers)
        except HTTPException as error:
            status = error.code or 500
            headers = {"Connection": "close"} if status == 413 else None
            return _status_response(status, error.description or error.name, answer_type, headers)
        return Response(
            otlp.encode(prepared.response, kind), status=200, headers={"traceparent": trace.traceparent}, content_type=kind
        )


def _describe(error: HTTPError) -> str:
    if error.detail is None:
        return error.error
    detail = error.detail if isinstance(error.detail, str) else msgspec.json.encode(error.detail).decode()
    return f"{error.error}: {detail}"


def _status_response(status: int, message: str, media: str, headers: dict[str, str] | None) -> Response:
    return Response(
        otlp.encode(otlp.status(status, message), media), status=status, headers=headers, content_type=media
    )


_STATUS_SCHEMA = {
    "type": "object",
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    },
}
_BINARY = {"type": "string", "format": "binary"}
_INT64 = {"type": ["string", "integer"]}
_REFUSALS = {
    "400": "malformed protobuf, JSON or gzip",
    "401": "no valid API key (when keys are configured)",
    "413": "body, decompressed body, record count or an event over its limit",
    "415": "unsupported Content-Type or Content-Encoding",
    "429": "over the rate limit; see Retry-After",
    "503": "cannot take events now (buffer full, breaker open); see Retry-After",
}


def openapi_path(summary: str, request_properties: dict[str, Any], rejected_field: str) -> dict[str, Any]:
    """An OTLP export operation: protobuf bodies as binary strings, JSON ones as objects."""

    def content(json_schema: dict[str, Any]) -> dict[str, Any]:
        return {otlp.PROTOBUF: {"schema": _BINARY}, otlp.JSON: {"schema": json_schema}}

    export_response = {
        "type": "object",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "properties": {rejected_field: _INT64, "errorMessage": {"type": "string"}},
            }
        },
    }
    responses: dict[str, Any] = {"200": {"description": "exported (see partialSuccess)", "content": content(export_response)}}
    for status, description in sorted(_REFUSALS.items()):
        responses[status] = {"description": f"{description}; a google.rpc.Status", "content": content(_STATUS_SCHEMA)}
    request_schema = {"type": "object", "properties": request_properties}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": content(request_schema)},
            "responses": responses,
        }
    }
