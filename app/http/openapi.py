"""The OpenAPI document each listener serves at ``/openapi.json``.

Its paths are the listener's route table (each route's dialect or view describes its
operation) and the Quart views registered with :func:`add_paths` (the status page). Request
schemas come from the same msgspec structs that validate requests, so the document cannot
drift from what the code accepts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cache
from typing import Any

import msgspec
from quart_trio import QuartTrio

from app import events
from app.http.routes import Route

PATHS_KEY = "OPENAPI_PATHS"
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


def add_paths(app: QuartTrio, paths: dict[str, Any]) -> None:
    app.config.setdefault(PATHS_KEY, {}).update(paths)


def paths_of(routes: Sequence[Route]) -> dict[str, Any]:
    """The path items of a route table: each route's operation under its path."""
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {}).update(route.operation())
    return paths


def document(app: QuartTrio, listener: str, routes: Sequence[Route]) -> dict[str, Any]:
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
    paths.update(paths_of(routes))
    return {
        "openapi": "3.1.0",
        "info": {"title": f"kafka-log-gateway {listener} listener", "version": "1"},
        "paths": paths,
        "components": {"schemas": _components()},
    }
