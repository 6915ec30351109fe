"""A disk-mode stream killed with SIGKILL again and again, with Kafka up and then away: every event
ever answered 202 is in Kafka in the end; duplicates only of what was in flight, counted and bounded.

The kill points are random but seeded: the seed is printed and in every assertion message, and
``KILL_SEED=<seed>`` replays the same points. Real broker (a Kafka of this module's own, so it can
be stopped), real processes, bounded in time.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ROOT, PrivateKafka
from tests.kafka_reader import KafkaReader
from tests.processes import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SEED = int(os.environ.get("KILL_SEED") or random.SystemRandom().randrange(1 << 32))
KILLS_WITH_KAFKA = 12
KILLS_WITHOUT_KAFKA = 10
BATCH = 50
BUFFER_EVENTS = 2000


class Client:
    """Posts batches as fast as the gateway answers; keeps the ids of every 202."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: set[str] = set()
        self.sent = 0
        self.refused: dict[int, int] = {}

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            while True:
                logs = [
                    {"source": f"k{i % 7}", "level": "INFO", "message": f"{self.sent}-{i}"} for i in range(BATCH)
                ]
                self.sent += 1
                try:
                    answer = await client.post("/api/v1/logs/batch", json={"logs": logs})
                except httpx.TransportError:
                    await trio.sleep(0.05)  # killed: not answered, so not counted
                    continue
                if answer.status_code == 202:
                    self.accepted.update(answer.json()["eventIds"])
                else:
                    self.refused[answer.status_code] = self.refused.get(answer.status_code, 0) + 1
                    await trio.sleep(0.05)


async def start(gateway: GatewayProcess) -> None:
    """Start and wait until the application listener answers (ready or not: Kafka may be away)."""
    if gateway.process is not None and gateway.process.returncode is None:
        return
    assert gateway.log_path is not None
    with open(gateway.log_path, "ab") as log:
        gateway.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "app"], env=gateway.env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT
        )
    async with httpx.AsyncClient() as client:
        with trio.fail_after(60):
            while True:
                try:
                    if (await client.get(gateway.url("application") + "/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


async def test_every_202_survives_kill_9_with_kafka_up_and_away(
    gateway_env: dict[str, str], private_kafka: PrivateKafka, tmp_path: Path
) -> None:
    print(f"KILL_SEED={SEED}")
    chosen = random.Random(SEED)
    env = {
        **gateway_env,
        "ROLES": "application",
        "KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap_servers,
        "APPLICATION_DURABILITY": "disk",
        "SPOOL_DIR": str(tmp_path / "spool"),
        "APPLICATION_BUFFER_EVENTS": str(BUFFER_EVENTS),
        "APPLICATION_RATE_LIMIT": "0",
        "READY_TIMEOUT": "1",
        "BREAKER_OPEN_SECONDS": "1",
        "APPLICATION_DELIVERY_TIMEOUT_MS": "10000",
    }
    gateway = GatewayProcess(env, log_path=str(tmp_path / "gateway.log"))
    client = Client(gateway.url("application"))
    kills: list[str] = []
    with trio.fail_after(420):
        await start(gateway)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            for phase, count in (("kafka up", KILLS_WITH_KAFKA), ("kafka away", KILLS_WITHOUT_KAFKA)):
                if phase == "kafka away":
                    await trio.to_thread.run_sync(private_kafka.down)
                    accepted_before_away = len(client.accepted)
                for _ in range(count):
                    await trio.sleep(chosen.uniform(0.2, 1.5))
                    kills.append(f"{phase} after {len(client.accepted)} accepted")
                    await gateway.kill()
                    await start(gateway)
            accepted_while_away = len(client.accepted) - accepted_before_away
            await trio.to_thread.run_sync(private_kafka.up)
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
        # One more start with Kafka back: whatever the spool holds goes out.
        await gateway.kill()
        await start(gateway)
    context = f"KILL_SEED={SEED}; {len(kills)} kills ({kills[-1]}); refused {client.refused}"
    assert len(kills) >= 20 and accepted_while_away > 0, context
    records = await KafkaReader(private_kafka.bootstrap_servers).read(
        env["APPLICATION_TOPIC"],
        until=lambda rs: client.accepted <= {r.headers["event-id"].decode() for r in rs},
        timeout=120,
        settle=2.0,
    )
    await gateway.stop()
    ids = [r.headers["event-id"].decode() for r in records]
    missing = client.accepted - set(ids)
    assert not missing, f"{len(missing)} events answered 202 are not in Kafka; {context}"
    duplicates = len(ids) - len(set(ids))
    # Only what was in flight at a kill can go twice: at most the profile's bound per kill.
    assert duplicates <= BUFFER_EVENTS * len(kills), f"{duplicates} duplicates; {context}"
    print(f"{len(client.accepted)} accepted, {len(ids)} records, {duplicates} duplicates, {context}")
