"""``python -m app outbox status|replay`` against the real PostgreSQL and Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import httpx
import pytest
import trio

from app.runtime import Runtime
from tests.conftest import ROOT
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration


def outbox_command(database_url: str, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "app", "outbox", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=str(ROOT), check=True, capture_output=True, text=True, timeout=60,
    )
    answer = json.loads(result.stdout)
    assert isinstance(answer, dict), result.stdout
    return answer


async def test_status_and_replay_with_the_original_event_ids(
    gateway: Runtime, database_url: str, kafka: KafkaReader
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("transaction")) as client:
        ids = []
        for amount in ("1.00", "2.00", "3.00"):
            response = await client.post(
                "/api/v1/transactions", json={"userId": "ops", "type": "DEPOSIT", "amount": amount, "currency": "USD"}
            )
            ids.append(response.json()["eventId"])
        first = await kafka.read(gateway.settings.transaction.topic, count=3)
        assert sorted(r.headers["event-id"].decode() for r in first) == sorted(ids)
        with trio.fail_after(20):
            while (status := await trio.to_thread.run_sync(outbox_command, database_url, "status"))["pending"]:
                await trio.sleep(0.2)
        assert status["published"] == 3 and status["relayLeaderBackendPid"]

        replay = await trio.to_thread.run_sync(outbox_command, database_url, "replay", "--since", "2000-01-01T00:00:00Z")
        assert replay["replayed"] == 3
    records = await kafka.read(gateway.settings.transaction.topic, count=6, settle=1.0)
    assert Counter(r.headers["event-id"].decode() for r in records) == {event_id: 2 for event_id in ids}
