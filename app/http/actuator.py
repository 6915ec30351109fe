"""Spring Boot Actuator's endpoints on every listener, so that the reference design's runbooks and
scripts keep working: ``/actuator/health``, ``/actuator/metrics``, ``/actuator/metrics/{name}``,
``/actuator/prometheus``, and the ``/actuator`` index of links.

Health is the listener's readiness checks, each a component (``kafka``, ``db``...); metrics are
the Prometheus registry read through :mod:`app.observability.actuator`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio

from app.core import Refusal
from app.http import openapi
from app.observability import actuator
from app.observability.metrics import Metrics

ReadyCheck = Callable[[], Awaitable[str | None]]

ACTUATOR_V3 = "application/vnd.spring-boot.actuator.v3+json"
JSON = "application/json"
# What a check carries when nobody named it.
UNNAMED = "readiness"
# The shipper listeners answer for their own service; the gateway listener for all of them.
SHIPPERS = frozenset({"application", "infrastructure", "transaction"})


class NamedCheck:
    """A readiness check reported as one component of ``/actuator/health``."""

    def __init__(self, component: str, check: ReadyCheck) -> None:
        self.component = component
        self._check = check

    async def __call__(self) -> str | None:
        return await self._check()


def component(name: str, check: ReadyCheck) -> ReadyCheck:
    """``check``, reported as ``name`` in ``/actuator/health`` (Spring's names: kafka, db...)."""
    return NamedCheck(name, check)


def component_name(check: ReadyCheck) -> str:
    return check.component if isinstance(check, NamedCheck) else UNNAMED


def _media_type() -> str:
    """Spring Boot's choice: its own v3 type, unless the client asks for plain JSON only."""
    accept = request.headers.get("Accept", "")
    if JSON in accept and ACTUATOR_V3 not in accept:
        return JSON
    return ACTUATOR_V3


def _answer(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, content_type=_media_type())


def register(app: QuartTrio, listener: str, metrics: Metrics, checks: Sequence[ReadyCheck]) -> None:
    """Serve the actuator endpoints on ``app``, one of ``listener``'s."""
    scope = {"service": listener} if listener in SHIPPERS else {}

    async def components() -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for check in checks:
            reason = await check()
            name = component_name(check)
            # Two checks of one component: DOWN when either is, with the first reason.
            if found.get(name) is None:
                found[name] = reason
        metrics.ready.labels(listener).set(0 if any(reason is not None for reason in found.values()) else 1)
        return found

    @app.get("/actuator")
    async def actuator_links() -> Response:
        base = request.host_url.rstrip("/") + "/actuator"

        def link(path: str, templated: bool = False) -> dict[str, Any]:
            return {"href": base + path, "templated": templated}

        return _answer(
            {
                "_links": {
                    "self": link(""),
                    "health": link("/health"),
                    "health-path": link("/health/{*path}", True),
                    "metrics": link("/metrics"),
                    "metrics-requiredMetricName": link("/metrics/{requiredMetricName}", True),
                    "prometheus": link("/prometheus"),
                }
            }
        )

    @app.get("/actuator/health")
    async def actuator_health() -> Response:
        body, status = actuator.health(await components())
        return _answer(body, status)

    @app.get("/actuator/health/<path>")
    async def actuator_health_component(path: str) -> Response:
        if path == "liveness":  # the process answers: it is alive
            return _answer({"status": "UP"})
        found = await components()
        if path == "readiness":
            body, status = actuator.health(found)
            return _answer({"status": body["status"]}, status)
        if path not in found:
            raise Refusal(404, "not found", f"no health component {path!r}; there are {sorted(found)}")
        body, status = actuator.health({path: found[path]})
        return _answer(body["components"][path], status)

    @app.get("/actuator/metrics")
    async def actuator_metric_names() -> Response:
        return _answer(actuator.names(metrics.registry))

    @app.get("/actuator/metrics/<required_metric_name>")
    async def actuator_metric(required_metric_name: str) -> Response:
        try:
            tags = actuator.parse_tags(request.args.getlist("tag"))
        except actuator.BadTag as error:
            raise Refusal(400, "bad request", str(error)) from None
        # On the trio thread: the gauges read state that only the trio thread may touch.
        found = actuator.metric(metrics.registry, required_metric_name, tags, scope)
        if found is None:
            raise Refusal(404, "not found", f"no metric {required_metric_name!r}; GET /actuator/metrics lists them")
        return _answer(found)

    @app.get("/actuator/prometheus")
    async def actuator_prometheus() -> Response:
        return Response(generate_latest(metrics.registry), status=200, content_type=CONTENT_TYPE_LATEST)

    openapi.add_paths(app, openapi_paths())


def openapi_paths() -> dict[str, Any]:
    def content(schema: dict[str, Any]) -> dict[str, Any]:
        return {ACTUATOR_V3: {"schema": schema}, JSON: {"schema": schema}}

    error = {"description": "refused", "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}}
    status = {"type": "string", "enum": ["UP", "DOWN"]}
    component_schema = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": status, "details": {"type": "object"}},
    }
    health = {
        "type": "object",
        "required": ["status", "components"],
        "properties": {"status": status, "components": {"type": "object", "additionalProperties": component_schema}},
    }
    link = {"type": "object", "required": ["href", "templated"],
            "properties": {"href": {"type": "string"}, "templated": {"type": "boolean"}}}
    measurement = {
        "type": "object",
        "required": ["statistic", "value"],
        "properties": {
            "statistic": {"type": "string", "enum": ["COUNT", "TOTAL", "TOTAL_TIME", "MAX", "VALUE"]},
            "value": {"type": "number"},
        },
    }
    available_tag = {
        "type": "object",
        "required": ["tag", "values"],
        "properties": {"tag": {"type": "string"}, "values": {"type": "array", "items": {"type": "string"}}},
    }
    metric = {
        "type": "object",
        "required": ["name", "measurements", "availableTags"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": ["string", "null"]},
            "baseUnit": {"type": ["string", "null"]},
            "measurements": {"type": "array", "items": measurement},
            "availableTags": {"type": "array", "items": available_tag},
        },
    }
    health_responses = {
        "200": {"description": "UP", "content": content(health)},
        "503": {"description": "DOWN: a component is", "content": content(health)},
    }
    return {
        "/actuator": {
            "get": {
                "summary": "Spring Boot Actuator's index of links",
                "responses": {"200": {"description": "links", "content": content(
                    {"type": "object", "properties": {"_links": {"type": "object", "additionalProperties": link}}}
                )}},
            }
        },
        "/actuator/health": {
            "get": {"summary": "health: the readiness checks as components", "responses": health_responses}
        },
        "/actuator/health/{path}": {
            "get": {
                "summary": "one health component, or the liveness and readiness groups",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                     "example": "liveness"}
                ],
                "responses": {
                    "200": {"description": "UP", "content": content(component_schema)},
                    "503": {"description": "DOWN", "content": content(component_schema)},
                    "404": error,
                },
            }
        },
        "/actuator/metrics": {
            "get": {
                "summary": "the names of the metrics",
                "responses": {"200": {"description": "names", "content": content(
                    {"type": "object", "required": ["names"],
                     "properties": {"names": {"type": "array", "items": {"type": "string"}}}}
                )}},
            }
        },
        "/actuator/metrics/{requiredMetricName}": {
            "get": {
                "summary": "one metric's measurements and tags, filtered by ?tag=key:value",
                "parameters": [
                    {"name": "requiredMetricName", "in": "path", "required": True, "schema": {"type": "string"},
                     "example": "producer.throttled"},
                    {"name": "tag", "in": "query", "required": False, "style": "form", "explode": True,
                     "schema": {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:.*$"}}},
                ],
                "responses": {
                    "200": {"description": "the metric", "content": content(metric)}, "400": error, "404": error,
                },
            }
        },
        "/actuator/prometheus": {
            "get": {
                "summary": "Prometheus metrics (the same as /metrics)",
                "responses": {
                    "200": {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
    }
