"""The OpenAPI document each listener serves at ``/openapi.json``.

Request schemas come from the same msgspec structs that validate requests, so the document
cannot drift from what the code accepts. Shippers add their paths when they register routes.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import msgspec
from quart_trio import QuartTrio

from app import events

PATHS_KEY = "OPENAPI_PATHS"
REFUSALS = {
    "400": "malformed JSON, NDJSON or gzip",
    "401": "no valid API key (when keys are configured)",
    "413": "body, decompressed body, batch or event over its limit",
    "415": "unsupported Content-Type or Content-Encoding",
    "422": "schema violations, with the index of every invalid event of a batch",
    "429": "over the rate limit; see Retry-After",
    "503": "cannot take events now (buffer full, breaker open, outbox unavailable); see Retry-After",
}


class Accepted(msgspec.Struct):
    status: str
    eventId: str


class BatchAccepted(msgspec.Struct):
    status: str
    count: int
    eventIds: list[str]


class ErrorAnswer(msgspec.Struct):
    error: str
    detail: Any = None


class TransactionBatch(msgspec.Struct):
    transactions: list[events.TransactionBatchItem]


class TransactionStatus(msgspec.Struct):
    eventId: str
    status: str
    acceptedAt: str
    topic: str
    publishedAt: str | None = None
    partition: int | None = None
    offset: int | None = None


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@cache
def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (
            events.LogBatch, events.MetricBatch, TransactionBatch, events.TransactionIn, Accepted, BatchAccepted,
            ErrorAnswer, TransactionStatus,
        ),
        ref_template="#/components/schemas/{name}",
    )
    level = components["LogIn"]["properties"]["level"]
    level.update(enum=sorted(LEVELS_ANY_CASE), description="TRACE, DEBUG, INFO, WARN, ERROR or FATAL, in any case")
    for name in ("TransactionIn", "TransactionBatchItem"):
        properties = components[name]["properties"]
        properties["type"] = {"type": "string", "enum": sorted(events.TRANSACTION_TYPES)}
        properties["currency"] = {"type": "string", "pattern": "^[A-Za-z]{3}$", "description": "ISO 4217 code"}
        properties["amount"] = {
            "description": "positive exact decimal, at most the currency's minor-unit fraction digits",
            "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}],
        }
    return components


LEVELS_ANY_CASE = {level for name in events.LEVELS for level in (name, name.lower())}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def ingest(summary: str, body: dict[str, Any], answer: str, *, conflict: bool = False) -> dict[str, Any]:
    """An ingest operation: 202 with ``answer``, or a JSON error."""
    responses: dict[str, Any] = {"202": {"description": "accepted", "content": _json(ref(answer))}}
    refusals = dict(REFUSALS)
    if conflict:
        refusals["409"] = "Idempotency-Key reused with a different body"
    for status, description in sorted(refusals.items()):
        responses[status] = {"description": description, "content": _json(ref("ErrorAnswer"))}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": body}, "responses": responses}}


def event_routes(route: str, batch_route: str, what: str, schema: str, batch_schema: str) -> dict[str, Any]:
    """A single-event route (JSON) and its batch route (JSON or NDJSON), as EventRoutes serves them."""
    return {
        route: ingest(f"one {what}", {"application/json": {"schema": ref(schema)}}, "Accepted"),
        batch_route: ingest(
            f"a batch of {what}s, all or nothing",
            {"application/json": {"schema": ref(batch_schema)}, "application/x-ndjson": {"schema": {"type": "string"}}},
            "BatchAccepted",
        ),
    }


def add_paths(app: QuartTrio, paths: dict[str, Any]) -> None:
    app.config.setdefault(PATHS_KEY, {}).update(paths)


def document(app: QuartTrio, listener: str) -> dict[str, Any]:
    text = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    status = {"type": "object", "properties": {"status": {"type": "string"}, "listener": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "liveness", "responses": {"200": {"description": "alive", "content": _json(status)}}}},
        "/ready": {
            "get": {
                "summary": "readiness",
                "responses": {
                    "200": {"description": "ready", "content": _json(status)},
                    "503": {"description": "not ready, with the reasons", "content": _json(status)},
                },
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": text}}},
    }
    paths.update(copy.deepcopy(app.config.get(PATHS_KEY, {})))
    return {
        "openapi": "3.1.0",
        "info": {"title": f"kafka-log-gateway {listener} listener", "version": "1"},
        "paths": paths,
        "components": {"schemas": _components()},
    }
