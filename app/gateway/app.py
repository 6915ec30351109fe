"""The gateway (8080): the unified entry point.

When a shipper shares the process, the gateway registers its very handlers: a request to
8080 is served exactly as the shipper would serve it, with no extra hop. When it runs apart,
the gateway forwards the request's bytes to it (:mod:`app.gateway.upstream`) and passes the
answer back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from app.gateway.upstream import Upstream
from app.http import openapi


class Shipper(Protocol):
    def register(self, app: QuartTrio) -> None: ...


def route_in_process(app: QuartTrio, shippers: Sequence[Shipper]) -> QuartTrio:
    """Serve the shippers' public routes on the gateway app."""
    for shipper in shippers:
        shipper.register(app)
    return app


def route_remote(app: QuartTrio, upstream: Upstream, routes: Sequence[tuple[str, str]], paths: dict[str, Any]) -> None:
    """Forward ``routes`` (rule, method) to a remote shipper; document them with ``paths``."""

    async def forward(**_: str) -> Response:
        body = await request.get_data(cache=False, as_text=False)
        assert isinstance(body, bytes)
        g.body_read = True
        target: bytes = request.scope.get("raw_path") or request.path.encode()
        if request.query_string:
            target += b"?" + request.query_string
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
        if request.remote_addr:
            headers.append((b"X-Forwarded-For", request.remote_addr.encode()))
        answer = await upstream.forward(request.method, target, headers, body)
        answer_headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers])
        return Response(answer.body, status=answer.status, headers=answer_headers)

    for rule, method in routes:
        app.add_url_rule(rule, f"forward_{upstream.name}_{method}_{rule}", forward, methods=[method])
    openapi.add_paths(app, paths)
