"""Disk-mode streams on the real broker: 202 once fsynced in the spool, delivered from there."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from app.config import Settings, load_settings
from app.runtime import Runtime, profile_producer_config, run
from app.spool.store import Store
from tests.conftest import wait_ready
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


@pytest.fixture
def disk_settings(gateway_env: dict[str, str], tmp_path: Path) -> Settings:
    return load_settings({**gateway_env, "APPLICATION_DURABILITY": "disk", "SPOOL_DIR": str(tmp_path / "spool")})


@pytest.fixture
async def disk_gateway(disk_settings: Settings) -> AsyncIterator[Runtime]:
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, disk_settings, handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        yield runtime
        runtime.shutdown()


def test_a_disk_stream_produces_with_acks_all_and_idempotence(disk_settings: Settings) -> None:
    config = profile_producer_config(disk_settings, "application")
    assert (config["acks"], config["enable.idempotence"]) == ("all", True)
    memory = dataclasses.replace(disk_settings, application=dataclasses.replace(disk_settings.application, durability="memory"))
    assert profile_producer_config(memory, "application")["acks"] == "1"


async def test_accepted_batches_are_spooled_then_delivered_and_the_spool_empties(
    disk_gateway: Runtime, kafka: KafkaReader
) -> None:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=disk_gateway.url("application")) as client:
        for batch in range(5):
            logs = [{"source": f"s{i % 3}", "level": "INFO", "message": f"{batch}-{i}"} for i in range(100)]
            answer = await client.post("/api/v1/logs/batch", json={"logs": logs})
            assert answer.status_code == 202, answer.text
            ids += answer.json()["eventIds"]
    records = await kafka.read(disk_gateway.profiles["application"].topic, count=500, settle=1.0)
    assert sorted(r.headers["event-id"].decode() for r in records) == sorted(ids)
    spool = disk_gateway.spools["application"]
    with trio.fail_after(10):
        while spool.events:
            await trio.sleep(0.05)
    assert spool.bytes == 0
    store = Store(Path(disk_gateway.settings.spool_directory), "application")
    store.open()
    try:
        assert list(store.rows()) == []
    finally:
        store.close()
