"""librdkafka's testing API, reached through ctypes, for what confluent-kafka cannot trigger.

``rd_kafka_test_fatal_error`` raises a fabricated fatal error on a live client, through the
same ``rd_kafka_set_fatal_error`` path as a real one (which only the idempotent and
transactional producers meet, and no test can provoke at will). The ``rd_kafka_t *`` is
read from the ``Handle`` struct of confluent-kafka's C extension (``rk`` comes right after
``PyObject_HEAD``); before anything is called on it, the pointer must lie in readable
memory and ``rd_kafka_name`` must give back the client's own name, so a changed layout
fails loudly instead of poking at memory.
"""

from __future__ import annotations

import ctypes
import os
import re
from functools import cache
from pathlib import Path

import confluent_kafka

# rd_kafka_resp_err_t values (rdkafka.h)
ERR_NO_ERROR = 0
ERR__FENCED = -144


class LayoutMismatch(RuntimeError):
    """The confluent-kafka object does not look like the struct this module expects."""


def _mappings() -> list[tuple[int, int, str, str]]:
    """(start, end, permissions, path) of every mapping of this process."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(part, 16) for part in fields[0].split("-"))
        out.append((start, end, fields[1], fields[5] if len(fields) > 5 else ""))
    return out


@cache
def library() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka's extension loaded (never a second copy)."""
    paths = {path for _, _, _, path in _mappings() if re.search(r"/librdkafka[^/]*\.so", path)}
    if len(paths) != 1:
        raise LayoutMismatch(f"expected one librdkafka mapped into this process, found {sorted(paths)}")
    [path] = paths
    # RTLD_NOLOAD: hand back the library already in memory, or fail.
    lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    lib.rd_kafka_version.restype = ctypes.c_int
    if lib.rd_kafka_version() != confluent_kafka.libversion()[1]:
        raise LayoutMismatch(f"{path} is not the librdkafka confluent-kafka reports")
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    lib.rd_kafka_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_fatal_error.restype = ctypes.c_int
    lib.rd_kafka_err2name.argtypes = [ctypes.c_int]
    lib.rd_kafka_err2name.restype = ctypes.c_char_p
    return lib


def _readable(address: int, size: int) -> bool:
    return any(
        start <= address and address + size <= end and perms.startswith("r")
        for start, end, perms, _ in _mappings()
    )


def client_handle(producer: confluent_kafka.Producer, client_id: str) -> int:
    """The ``rd_kafka_t *`` of ``producer``, checked to be the client named ``<client_id>#producer-N``."""
    if not isinstance(producer, confluent_kafka.Producer):
        raise LayoutMismatch(f"not a confluent_kafka.Producer: {type(producer)!r}")
    rk_field = id(producer) + object.__basicsize__  # Handle.rk follows PyObject_HEAD
    rk = ctypes.c_void_p.from_address(rk_field).value
    if not rk or rk % ctypes.alignment(ctypes.c_void_p) or not _readable(rk, 4096):
        raise LayoutMismatch(f"Handle.rk is not a pointer to readable memory: {rk!r}")
    name = library().rd_kafka_name(rk)
    expected = re.escape(client_id) + r"#producer-\d+"
    if name is None or not re.fullmatch(expected, name.decode(errors="replace")):
        raise LayoutMismatch(f"rd_kafka_name() gave {name!r}, expected {expected}")
    return rk


def fatal_error(rk: int) -> tuple[str, str] | None:
    """``rd_kafka_fatal_error``: (error name, reason) once the client has raised one, else None."""
    lib = library()
    reason = ctypes.create_string_buffer(512)
    code = lib.rd_kafka_fatal_error(rk, reason, len(reason))
    if code == ERR_NO_ERROR:
        return None
    return lib.rd_kafka_err2name(code).decode(), reason.value.decode()


def trigger_fatal_error(
    producer: confluent_kafka.Producer, client_id: str, reason: str, code: int = ERR__FENCED
) -> int:
    """Raise a fabricated fatal error ``code`` on ``producer``; returns its ``rd_kafka_t *``.

    librdkafka then purges the records not sent yet and confluent-kafka raises the error from
    the next ``poll``/``flush``. An idempotent producer also fails every later ``produce``
    with _FATAL and sends nothing more; librdkafka checks that only for idempotent producers.
    """
    rk = client_handle(producer, client_id)
    if fatal_error(rk) is not None:
        raise RuntimeError(f"{client_id} already has a fatal error: {fatal_error(rk)}")
    result = library().rd_kafka_test_fatal_error(rk, code, reason.encode())
    if result != ERR_NO_ERROR:
        raise RuntimeError(f"rd_kafka_test_fatal_error failed: {library().rd_kafka_err2name(result)!r}")
    raised = fatal_error(rk)
    expected_name = library().rd_kafka_err2name(code).decode()
    if raised is None or raised[0] != expected_name or reason not in raised[1]:
        raise RuntimeError(f"rd_kafka_fatal_error reports {raised!r} after the test error {expected_name}")
    return rk
