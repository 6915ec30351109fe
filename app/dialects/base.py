"""What every dialect is: how it decodes a request's body into a stream's events, and answers.

A dialect is one wire format (the native JSON routes, OTLP/HTTP, Python's HTTPHandler form...).
It is sans-IO: bytes and headers in, events or a :class:`~app.core.Refusal` out, and an
:class:`Answer` for what the stream did. The pipeline (:mod:`app.http.pipeline`) does the rest
for every dialect alike: the body's size and time bounds, content decoding, admission, the
submission, spans, metrics and the answer's common headers.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from app.core import Acknowledgement, Headers, Refusal

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"

_encode: Final = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Request:
    """What a dialect and a stream see of one request: headers by lowercase name, path parameters,
    the query string, and the media type of its body (checked against the dialect's)."""

    method: str
    path: str
    headers: Mapping[str, str]
    params: Mapping[str, str] = field(default_factory=dict)
    query: bytes = b""
    media_type: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may hold once decoded (and inflated, for a dialect that inflates itself)."""

    max_events: int
    max_decompressed_bytes: int = 0


@dataclass(slots=True)
class Decoded:
    """A request's events, in the form its stream takes (``LogIn``, ``MetricIn``, ``TransactionIn``).

    ``own_headers``: per event, the trace headers of its own (OTLP log records), else the request's.
    ``state``: what the dialect keeps for its answer (OTLP's rejected records, say).
    ``acknowledge``: the client waits for Kafka's word (HEC's acks, forward's ``ack``): the stream
    then follows the records and hands back an :class:`~app.core.Acknowledgement`.
    """

    events: list[Any]
    own_headers: Sequence[Headers | None] | None = None
    state: Any = None
    acknowledge: bool = False
    # Values of the body that are no event, by reason (Prometheus' staleness markers, collectd's NaN):
    # counted by the pipeline (gateway_ingest_skipped_values_total) once the request is taken.
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Accepted:
    """What a stream did with a request's events: their ids, and headers for the answer."""

    event_ids: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    # When the dialect asked for it (Decoded.acknowledge) and the stream delivers to Kafka itself.
    acknowledgement: Acknowledgement | None = None


@dataclass(slots=True)
class Answer:
    """A dialect's answer; the pipeline adds the trace and request id headers."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


class Dialect(Protocol):
    """One wire format of one kind of events. Instances hold no request state."""

    name: str  # the ``dialect`` label of the request metrics
    media_types: frozenset[str]  # the Content-Types it takes; anything else is a 415

    def authorization(self, request: Request) -> str | None:
        """The request's credentials as an ``Authorization`` value (``Bearer <key>``), for the API keys."""

    def decode(self, body: bytes, request: Request, limits: Limits) -> Decoded:
        """The events of a body (raises Refusal: 400, 413, 422)."""

    def answer(self, decoded: Decoded, accepted: Accepted, request: Request) -> Answer:
        """The success answer once the stream took the events."""

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        """A refusal in the dialect's terms (raised anywhere on the request's way)."""

    def operation(self) -> dict[str, Any]:
        """The OpenAPI operation of a route served in this dialect."""


class JSONDialect:
    """What most dialects share: credentials in ``Authorization: Bearer``, refusals as the JSON error."""

    def authorization(self, request: Request) -> str | None:
        return request.headers.get("authorization")

    def refuse(self, refusal: Refusal, request: Request) -> Answer:
        return json_error(refusal)


def bearer_or_basic(request: Request) -> str | None:
    """The credentials as the API keys take them: ``Authorization: Bearer <key>`` as sent, or Basic
    credentials whose password is the key (for agents that only do basic auth: Prometheus'
    ``basic_auth``, collectd's ``User``/``Password``)."""
    authorization = request.headers.get("authorization")
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return authorization
    try:
        _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return f"Bearer {password}"


def json_error(refusal: Refusal) -> Answer:
    """The native JSON error answer: ``{"error": ..., "detail": ...}`` with the refusal's status."""
    payload: dict[str, Any] = {"error": refusal.error}
    if refusal.detail is not None:
        payload["detail"] = refusal.detail
    return Answer(refusal.status, _encode(payload), JSON, refusal.headers)


def json_answer(payload: Any, status: int = 202, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, _encode(payload), JSON, headers or {})


# -- OpenAPI fragments the dialects describe themselves with ---------------------------------

REFUSALS: Final = {
    "400": "malformed JSON, NDJSON or gzip",
    "401": "no valid API key (when keys are configured)",
    "413": "body, decompressed body, batch or event over its limit",
    "415": "unsupported Content-Type or Content-Encoding",
    "422": "schema violations, with the index of every invalid event of a batch",
    "429": "over the rate limit; see Retry-After",
    "503": "cannot take events now (buffer full, breaker open, outbox unavailable); see Retry-After",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def ingest_operation(summary: str, body: dict[str, Any], answer: str, *, conflict: bool = False) -> dict[str, Any]:
    """An ingest operation answered 202 with the ``answer`` schema, or a JSON error."""
    responses: dict[str, Any] = {"202": {"description": "accepted", "content": {JSON: {"schema": ref(answer)}}}}
    refusals = dict(REFUSALS)
    if conflict:
        refusals["409"] = "Idempotency-Key reused with a different body"
    for status, description in sorted(refusals.items()):
        responses[status] = {"description": description, "content": {JSON: {"schema": ref("ErrorAnswer")}}}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": body}, "responses": responses}}
