"""Disk-mode streams on the real broker: 202 once fsynced in the spool, delivered from there."""

from __future__ import annotations

import dataclasses
import json
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
def settings(gateway_env: dict[str, str], tmp_path: Path) -> Settings:
    """The conftest's gateway, with a disk-mode application stream."""
    return load_settings({**gateway_env, "APPLICATION_DURABILITY": "disk", "SPOOL_DIR": str(tmp_path / "spool")})


def test_a_disk_stream_produces_with_acks_all_and_idempotence(settings: Settings) -> None:
    config = profile_producer_config(settings, "application")
    assert (config["acks"], config["enable.idempotence"]) == ("all", True)
    memory = dataclasses.replace(settings, application=dataclasses.replace(settings.application, durability="memory"))
    assert profile_producer_config(memory, "application")["acks"] == "1"


async def test_accepted_batches_are_spooled_then_delivered_and_the_spool_empties(
    gateway: Runtime, kafka: KafkaReader
) -> None:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        for batch in range(5):
            logs = [{"source": f"s{i % 3}", "level": "INFO", "message": f"{batch}-{i}"} for i in range(100)]
            answer = await client.post("/api/v1/logs/batch", json={"logs": logs})
            assert answer.status_code == 202, answer.text
            ids += answer.json()["eventIds"]
    records = await kafka.read(gateway.profiles["application"].topic, count=500, settle=1.0)
    assert sorted(r.headers["event-id"].decode() for r in records) == sorted(ids)
    spool = gateway.spools["application"]
    with trio.fail_after(10):
        while spool.events:
            await trio.sleep(0.05)
    assert spool.bytes == 0
    store = Store(Path(gateway.settings.spool_directory), "application")
    store.open()
    try:
        assert list(store.rows()) == []
    finally:
        store.close()


async def test_each_key_reaches_kafka_in_the_order_its_events_were_accepted(
    gateway: Runtime, kafka: KafkaReader
) -> None:
    sent = 0
    async with httpx.AsyncClient(base_url=gateway.url("application")) as client:
        async with trio.open_nursery() as nursery:
            # Four clients at once, so that appends are grouped and interleave in the spool.
            async def post(worker: int) -> None:
                nonlocal sent
                for batch in range(10):
                    logs = [
                        {"source": f"key-{i % 4}", "level": "INFO", "message": f"{worker}:{batch}:{i}"} for i in range(50)
                    ]
                    answer = await client.post("/api/v1/logs/batch", json={"logs": logs})
                    assert answer.status_code == 202, answer.text
                    sent += 50

            for worker in range(4):
                nursery.start_soon(post, worker)
    records = await kafka.read(gateway.profiles["application"].topic, count=sent, settle=1.0)
    assert len(records) == sent
    for key in {r.key for r in records}:
        of_key = [r for r in records if r.key == key]
        assert len({r.partition for r in of_key}) == 1, key
        # Per worker (one client's requests are answered in turn), its events of this key in sending order.
        for worker in range(4):
            mine = [json.loads(r.value)["message"] for r in sorted(of_key, key=lambda r: r.offset)]
            mine = [m for m in mine if m.startswith(f"{worker}:")]
            positions = [tuple(int(x) for x in m.split(":")[1:]) for m in mine]
            assert positions == sorted(positions), (key, worker)


async def test_damaged_spool_data_is_reported_on_ready_and_the_stream_stays_ready(
    settings: Settings, kafka: KafkaReader
) -> None:
    directory = Path(settings.spool_directory)
    directory.mkdir(parents=True)
    (directory / "application.sqlite").write_bytes(b"not a spool at all " * 1000)
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        async with httpx.AsyncClient() as client:
            for listener in ("application", "gateway"):
                ready = await client.get(runtime.url(listener) + "/ready")
                assert ready.status_code == 200, ready.text
                [notice] = ready.json()["notices"]
                assert "application spool" in notice and str(directory / "quarantine") in notice, notice
            answer = await client.post(
                runtime.url("application") + "/api/v1/logs", json={"source": "s", "level": "INFO", "message": "after"}
            )
            assert answer.status_code == 202, answer.text
        [record] = await kafka.read(runtime.profiles["application"].topic, count=1, settle=0.5)
        assert record.headers["event-id"].decode() == answer.json()["eventId"]
        assert list((directory / "quarantine").glob("application-*.sqlite"))
        runtime.shutdown()
