"""The application-log shipper (8081): application logs on the application profile.

Its routes, one per dialect: the native single and batch routes, OTLP/HTTP logs, and Python's
``logging.handlers.HTTPHandler``. Every one of them feeds the same stream.
"""

from __future__ import annotations

from app.config import Settings
from app.dialects import httphandler, native, otlp
from app.http.routes import Route
from app.streams import ChannelStream, ProfileSink, log_records

NAME = "application"

ROUTES = (
    Route("POST", "/api/v1/logs", NAME, native.Single(native.LOGS)),
    Route("POST", "/api/v1/logs/batch", NAME, native.Batch(native.LOGS)),
    Route("POST", "/v1/logs", NAME, otlp.LOGS),
    Route("POST", "/api/v1/logs/python", NAME, httphandler.FORM_LOGS),
)


def stream(settings: Settings, profile: ProfileSink) -> ChannelStream:
    return ChannelStream(
        profile, log_records, retry_after_seconds=settings.retry_after_seconds, max_event_bytes=settings.max_event_bytes
    )

