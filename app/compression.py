"""Bounded decompression of request bodies: gzip and snappy (block format).

Both are bounded before they inflate: gzip a chunk at a time up to the limit, snappy by the
uncompressed length its block header states, so a bomb costs nothing. Used by the pipeline for
``Content-Encoding`` and by dialects whose clients compress without saying so (Loki's protobuf).
"""

from __future__ import annotations

import zlib

import cramjam

from app.core import Refusal


def gunzip(body: bytes, limit: int) -> bytes:
    """A gzip body, every member of it (RFC 1952 allows several one after the other: Fluentd's
    compressed chunks are written so), bounded in total by ``limit``."""
    parts: list[bytes] = []
    total = 0
    rest = body
    while True:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = decompressor.decompress(rest, limit - total + 1)
        except zlib.error as error:
            raise Refusal(400, "malformed gzip body", str(error)) from None
        total += len(data)
        if total > limit or decompressor.unconsumed_tail:
            raise Refusal(413, "payload too large", f"the body decompresses to more than {limit} bytes")
        if not decompressor.eof:
            raise Refusal(400, "malformed gzip body", "the gzip stream is truncated")
        parts.append(data)
        rest = decompressor.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)


def unsnappy(body: bytes, limit: int) -> bytes:
    """A snappy block (the raw format Prometheus remote_write and Loki send, not the framed one);
    413 when its header states more than ``limit`` bytes, before anything is inflated."""
    try:
        length = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as error:
        raise Refusal(400, "malformed snappy body", str(error)) from None
    if length > limit:
        raise Refusal(413, "payload too large", f"the body decompresses to {length} bytes, the limit is {limit}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as error:
        raise Refusal(400, "malformed snappy body", str(error)) from None
