"""Random identifiers, made in bulk where a request needs many."""

from __future__ import annotations

import os
from typing import Final

_UUID_VERSION_4: Final = bytes(byte & 0x0F | 0x40 for byte in range(256))
_UUID_VARIANT: Final = bytes(byte & 0x3F | 0x80 for byte in range(256))  # RFC 4122's
# Where each of the 32 hex digits goes in the 36 characters of a UUID's text.
_DIGIT_PLACES: Final = tuple(place for place in range(36) if place not in (8, 13, 18, 23))
# From this many on, placing digits column by column beats formatting each UUID.
_BY_COLUMN: Final = 32


def new_uuids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, from one read of the OS's random source.

    ``str(uuid.uuid4())`` per event cost more than decoding and encoding the event together.
    """
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION_4)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    if count < _BY_COLUMN:
        h = raw.hex()
        return [
            f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * count, 32)
        ]
    # 32 strided copies for the whole batch, then one slice per UUID.
    digits = raw.hex().encode()
    text = bytearray(b"-" * (36 * count))
    for column, place in enumerate(_DIGIT_PLACES):
        text[place::36] = digits[column::32]
    joined = text.decode()
    return [joined[i:i + 36] for i in range(0, 36 * count, 36)]
