"""JSON answers of the listeners' Quart views: one shape, ``{"error": ..., "detail": ...}``, for every refusal."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Response

from app.core import Refusal


def json_response(payload: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(payload), status=status, headers=headers, content_type="application/json")


def error_response(error: Refusal) -> Response:
    payload: dict[str, Any] = {"error": error.error}
    if error.detail is not None:
        payload["detail"] = error.detail
    return json_response(payload, error.status, error.headers)
