"""Request bodies: content type, size limits and content decoding (gzip, snappy), checked before any decoding."""

from __future__ import annotations

from collections.abc import Collection

from app.compression import gunzip, unsnappy
from app.core import Refusal


def check_media_type(content_type: str | None, accepted: Collection[str]) -> str:
    """The media type of a ``Content-Type`` value, or 415 when it is not one of ``accepted``."""
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if value not in accepted:
        raise Refusal(
            415,
            "unsupported media type",
            f"Content-Type must be one of {', '.join(sorted(accepted))}, not {value or 'none'}",
        )
    return value


def check_length(length: int | None, max_bytes: int) -> None:
    """413 for a declared ``Content-Length`` over the limit, before any of the body is read."""
    if length is not None and length > max_bytes:
        # Refused unread: the connection cannot be reused for another request.
        raise Refusal(
            413,
            "payload too large",
            f"the body has {length} bytes, the limit is {max_bytes}",
            headers={"Connection": "close"},
        )


def decode_content(body: bytes, content_encoding: str | None, max_bytes: int, max_decompressed_bytes: int) -> bytes:
    """A body as read, decompressed when its ``Content-Encoding`` is gzip; 413 past either limit."""
    if len(body) > max_bytes:
        raise Refusal(413, "payload too large", f"the body has more than {max_bytes} bytes")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        return gunzip(body, max_decompressed_bytes)
    if encoding == "snappy":
        return unsnappy(body, max_decompressed_bytes)
    raise Refusal(415, "unsupported content encoding", f"Content-Encoding {encoding!r}: use gzip, snappy or none")
