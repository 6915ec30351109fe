"""A gateway with its socket listeners on ports of their own, and helpers to read what they wrote."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import ConsumedRecord, KafkaReader
from tests.processes import free_port


@pytest.fixture
def socket_env(gateway_env: dict[str, str]) -> dict[str, str]:
    """An application shipper with syslog (UDP and TCP on one port) and forward on free ports."""
    return {
        **gateway_env,
        "ROLES": "application",
        "SYSLOG_PORT": str(free_port()),
        "FORWARD_PORT": str(free_port()),
        "SYSLOG_IDLE_TIMEOUT": "30",
        "FORWARD_IDLE_TIMEOUT": "30",
    }


@contextlib.asynccontextmanager
async def socket_gateway(env: dict[str, str]) -> AsyncIterator[Runtime]:
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        await wait_ready(runtime.url("application"))
        try:
            yield runtime
        finally:
            runtime.shutdown()


@pytest.fixture
async def sockets(socket_env: dict[str, str]) -> AsyncIterator[Runtime]:
    async with socket_gateway(socket_env) as runtime:
        yield runtime


def endpoint(runtime: Runtime, listener: str) -> tuple[str, int]:
    """The host and port of a socket listener, from ``Runtime.addresses`` (``tcp://127.0.0.1:5514``)."""
    match = re.fullmatch(r"\w+://\[?([^\]]+)\]?:(\d+)", runtime.addresses[listener][0])
    assert match is not None
    return match.group(1), int(match.group(2))


def marker() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


async def read_events(
    kafka: KafkaReader, runtime: Runtime, *, key: str, count: int, settle: float = 2.0, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The events keyed ``key`` in the application topic: waits for ``count``, then ``settle`` more seconds."""
    topic = runtime.profiles["application"].topic

    def mine(records: list[ConsumedRecord]) -> list[ConsumedRecord]:
        return [record for record in records if record.key == key.encode()]

    records = await kafka.read(topic, until=lambda records: len(mine(records)) >= count, settle=settle, timeout=timeout)
    return [json.loads(record.value) for record in mine(records)]


def metric(runtime: Runtime, name: str, **labels: str) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0
