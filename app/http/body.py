"""Request bodies: content type, size limits and gzip, checked before any decoding."""

from __future__ import annotations

import zlib
from collections.abc import Collection

from quart import Request, g

from app.http.errors import HTTPError

JSON = "application/json"
NDJSON = "application/x-ndjson"


def media_type(request: Request, accepted: Collection[str]) -> str:
    """The request's media type, or 415 when it is not one of ``accepted``."""
    value = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if value not in accepted:
        raise HTTPError(
            415,
            "unsupported media type",
            f"Content-Type must be one of {', '.join(sorted(accepted))}, not {value or 'none'}",
        )
    return value


async def read_body(request: Request, *, max_bytes: int, max_decompressed_bytes: int) -> bytes:
    """The body, decompressed when ``Content-Encoding: gzip``; 413 past either limit."""
    length = request.content_length
    if length is not None and length > max_bytes:
        # Refused unread: the connection cannot be reused for another request.
        raise HTTPError(
            413,
            "payload too large",
            f"the body has {length} bytes, the limit is {max_bytes}",
            headers={"Connection": "close"},
        )
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)
    g.body_read = True
    if len(body) > max_bytes:
        raise HTTPError(413, "payload too large", f"the body has more than {max_bytes} bytes")
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise HTTPError(415, "unsupported content encoding", f"Content-Encoding {encoding!r}: use gzip or none")
    return gunzip(body, max_decompressed_bytes)


def gunzip(body: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as error:
        raise HTTPError(400, "malformed gzip body", str(error)) from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise HTTPError(413, "payload too large", f"the body decompresses to more than {limit} bytes")
    if not decompressor.eof:
        raise HTTPError(400, "malformed gzip body", "the gzip stream is truncated")
    return data
