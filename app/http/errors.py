"""Error answers: one JSON shape, ``{"error": ..., "detail": ...}``, for every refusal."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Response


class HTTPError(Exception):
    """Raised by request handling; turned into a JSON error response by the app."""

    def __init__(
        self, status: int, error: str, detail: Any = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def json_response(payload: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(payload), status=status, headers=headers, content_type="application/json")


def error_payload(error: HTTPError) -> dict[str, Any]:
    payload: dict[str, Any] = {"error": error.error}
    if error.detail is not None:
        payload["detail"] = error.detail
    return payload


def error_response(error: HTTPError) -> Response:
    return json_response(error_payload(error), error.status, error.headers)
