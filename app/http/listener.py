"""The Quart app behind every listener's pipeline: health, readiness, metrics, the OpenAPI
document, JSON errors.

Each listener (gateway, application, infrastructure, transaction) serves its route table
through :mod:`app.http.pipeline` and everything else through one of these apps; all share the
process's metrics registry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from app.core import Refusal
from app.http import actuator, openapi
from app.http.errors import error_response, json_response
from app.http.routes import Route
from app.observability.metrics import Metrics
from app.observability.tracing import valid_request_id

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[str | None]]
# What ``/ready`` reports without being unready for it (damaged spool data set aside), or None.
ReadyNotice = Callable[[], str | None]


READY_CHECKS_KEY = "GATEWAY_READY_CHECKS"
# How often the readiness gauge is evaluated when nobody asks /ready.
READY_WATCH_INTERVAL = 5.0


async def readiness(name: str, checks: Sequence[ReadyCheck], metrics: Metrics) -> list[str]:
    """Why the listener is not ready (nothing when it is); sets its ``gateway_ready`` gauge."""
    reasons: list[str] = []
    for check in checks:
        reason = await check()
        if reason is not None:
            reasons.append(reason)
    metrics.ready.labels(name).set(0 if reasons else 1)
    return reasons


async def watch_readiness(
    apps: Mapping[str, QuartTrio], metrics: Metrics, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Evaluate every listener's readiness every READY_WATCH_INTERVAL, so that ``gateway_ready``
    (and the GatewayNotReady alert) is true without a load balancer asking ``/ready``."""
    task_status.started()
    while True:
        for name, app in apps.items():
            try:
                await readiness(name, app.config[READY_CHECKS_KEY], metrics)
            except Exception:  # a check that breaks must not stop the process; /ready would answer 500
                log.exception("readiness of %s could not be evaluated", name)
                metrics.ready.labels(name).set(0)
        await trio.sleep(READY_WATCH_INTERVAL)


def create_listener_app(
    name: str,
    metrics: Metrics,
    ready_checks: Sequence[ReadyCheck],
    routes: Sequence[Route],
    *,
    max_request_bytes: int,
    notices: Sequence[ReadyNotice] = (),
) -> QuartTrio:
    """An app serving ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` (which documents
    ``routes`` too), with JSON error answers. ``/ready`` lists ``notices`` too, ready or not."""
    app = QuartTrio(f"gateway.{name}")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def record_request(response: Response) -> Response:
        if request.content_length or "Transfer-Encoding" in request.headers:
            # No view here reads a body: reusing the connection would leave the next request
            # behind the unread bytes; close it instead.
            response.headers["Connection"] = "close"
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(name, route, str(response.status_code)).inc()
        started = getattr(g, "started", None)
        if started is not None:
            metrics.http_duration.labels(name, route).observe(time.perf_counter() - started)
        request_id = valid_request_id(request.headers.get("X-Request-ID"))
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response

    @app.errorhandler(Refusal)
    async def handle_refusal(error: Refusal) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def handle_http_exception(error: HTTPException) -> Response:
        status = error.code or 500
        # A body refused part-way leaves the connection unusable for another request.
        headers = {"Connection": "close"} if status == 413 else None
        return error_response(Refusal(status, (error.name or "error").lower(), error.description, headers=headers))

    @app.errorhandler(Exception)
    async def handle_unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s", name)
        return error_response(Refusal(500, "internal error", type(error).__name__))

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "alive", "listener": name, "pid": os.getpid()}, 200)

    app.config[READY_CHECKS_KEY] = tuple(ready_checks)

    @app.get("/ready")
    async def ready() -> Response:
        reasons = await readiness(name, ready_checks, metrics)
        found = [notice for notice in (each() for each in notices) if notice is not None]
        noted = {"notices": found} if found else {}
        if reasons:
            return json_response({"status": "unavailable", "listener": name, "reasons": reasons, **noted}, 503)
        return json_response({"status": "ready", "listener": name, **noted}, 200)

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        return json_response(openapi.document(app, name, routes), 200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        # On the trio thread: the gauges read state that only the trio thread may touch.
        body = generate_latest(metrics.registry)
        return Response(body, status=200, content_type=CONTENT_TYPE_LATEST)

    # /actuator/health, /actuator/metrics[/{name}], /actuator/prometheus: the reference design's runbooks.
    actuator.register(app, name, metrics, ready_checks)
    return app
