"""The status page's routes on the gateway listener: ``/``, its script and style, ``/status.json``.

The page is three static files shipped inside the package (no build step, no CDN): it polls
``/status.json`` every second and draws rates, percentiles and sparklines itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from app.http import openapi
from app.http.errors import json_response
from app.observability.metrics import Metrics
from app.status.snapshot import snapshot

# Every request the page makes goes to this origin; the browser refuses anything else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}


def _read(name: str) -> bytes:
    return resources.files("app.status").joinpath("static", name).read_bytes()


def register(app: QuartTrio, metrics: Metrics, routes: Mapping[str, str] | None = None) -> None:
    """Serve the page and its data on ``app`` (the gateway listener); ``routes``: the service of each
    route path of its table."""
    for path, (name, content_type) in FILES.items():
        body = _read(name)  # read once: a missing file fails start-up, not the first visitor

        async def serve(body: bytes = body, content_type: str = content_type) -> Response:
            return Response(
                body,
                status=200,
                content_type=content_type,
                headers={"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY},
            )

        app.add_url_rule(path, f"status_file_{name}", serve, methods=["GET"])

    @app.get("/status.json")
    async def status_json() -> Response:
        # On the trio thread: the gauges read state that only the trio thread may touch.
        return json_response(snapshot(metrics.registry, routes), 200, {"Cache-Control": "no-store"})

    openapi.add_paths(app, openapi_paths())


def openapi_paths() -> dict[str, Any]:
    def text(summary: str, media_type: str) -> dict[str, Any]:
        content = {media_type: {"schema": {"type": "string"}}}
        return {"get": {"summary": summary, "responses": {"200": {"description": summary, "content": content}}}}

    histogram = {
        "type": "object",
        "required": ["le", "counts", "count", "sum"],
        "properties": {
            "le": {"type": "array", "items": {"type": "number"}},
            "counts": {"type": "array", "items": {"type": "number"}},
            "count": {"type": "number"},
            "sum": {"type": "number"},
        },
    }
    number_or_null = {"type": ["number", "null"]}
    service = {
        "type": "object",
        "required": ["acked", "errors", "throttled", "rejected", "deadLetters", "lost", "breaker", "send", "http"],
        "properties": {
            "acked": {"type": "number"},
            "errors": {"type": "number"},
            "throttled": {"type": "number"},
            "rejected": {"type": "number"},
            "deadLetters": {"type": "number"},
            "lost": {"type": "number"},
            "bufferFill": number_or_null,
            "bufferEvents": number_or_null,
            "breaker": {"type": ["string", "null"], "enum": ["closed", "open", "half-open", "unknown", None]},
            "requests": {"type": "object", "additionalProperties": {"type": "number"}},
            "send": histogram,
            "http": histogram,
        },
    }
    status = {
        "type": "object",
        "required": ["time", "pid", "services", "outbox", "process"],
        "properties": {
            "time": {"type": "number", "description": "server time, seconds since the epoch"},
            "pid": {"type": "integer", "description": "the answering process: counters compare within one"},
            "services": {
                "type": "object",
                "required": ["application", "infrastructure", "transaction"],
                "additionalProperties": service,
            },
            "outbox": {
                "type": "object",
                "properties": {
                    "pending": number_or_null,
                    "oldestAge": number_or_null,
                    "published": {"type": "number"},
                    "failures": {"type": "number"},
                    "relay": {"type": ["string", "null"]},
                    "commit": histogram,
                },
            },
            "process": {
                "type": "object",
                "properties": {"cpuSeconds": number_or_null, "rss": number_or_null, "startTime": number_or_null},
            },
            "consumers": {
                "type": "array",
                "description": "consumer groups reading the gateway's topics: records behind and the oldest one's wait",
                "items": {
                    "type": "object",
                    "required": ["group", "topic", "lag", "oldestAge", "partitions"],
                    "properties": {
                        "group": {"type": "string"},
                        "topic": {"type": "string"},
                        "lag": {"type": "number"},
                        "oldestAge": number_or_null,
                        "partitions": {"type": "integer"},
                    },
                },
            },
        },
    }
    return {
        "/": text("live status page", "text/html"),
        "/status.js": text("the status page's script", "text/javascript"),
        "/status.css": text("the status page's style", "text/css"),
        "/status.json": {
            "get": {
                "summary": "cumulative counters, gauges and histogram buckets per service, for the status page",
                "responses": {"200": {"description": "a snapshot", "content": {"application/json": {"schema": status}}}},
            }
        },
    }
