"""Disk-mode streams through faults, on a Kafka of this module's own (so it can be stopped), with
the gateway as a real process; each test bounded in time.

- kill -9, again and again, with Kafka up and then away: every event ever answered 202 is in
  Kafka in the end; duplicates only of what was in flight, counted and bounded. The kill points
  are random but seeded: the seed is printed and in every assertion message, and
  ``KILL_SEED=<seed>`` replays the same points;
- an outage ten times longer than the memory bound's worth of traffic: 202 while the spool has
  room, then 503 with Retry-After, then everything delivered once the broker is back;
- a full disk (a small loop-mounted ext4; needs root, else skipped with the reason): 503 with
  Retry-After and not ready, no crash, 202 again once space returns, nothing accepted lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
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


def disk_env(gateway_env: dict[str, str], kafka: PrivateKafka, spool_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **gateway_env,
        "ROLES": "application",
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "APPLICATION_DURABILITY": "disk",
        "SPOOL_DIR": str(spool_dir),
        "APPLICATION_RATE_LIMIT": "0",
        "READY_TIMEOUT": "1",
        "BREAKER_OPEN_SECONDS": "1",
        **extra,
    }


async def post_until_refused(client: httpx.AsyncClient, accepted: set[str], *, size: int, limit: int) -> httpx.Response:
    """Batches of ``size`` until one is refused (or ``limit`` were sent); the refusal."""
    for batch in range(limit):
        logs = [{"source": f"k{i % 5}", "level": "INFO", "message": f"{batch}-{i}-" + "x" * 200} for i in range(size)]
        answer = await client.post("/api/v1/logs/batch", json={"logs": logs})
        if answer.status_code != 202:
            return answer
        accepted.update(answer.json()["eventIds"])
    raise AssertionError(f"{limit} batches accepted, none refused")


@contextlib.asynccontextmanager
async def kafka_away(kafka: PrivateKafka, gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    """Kafka stopped, the gateway started, a client on its application listener; Kafka back afterwards."""
    await trio.to_thread.run_sync(kafka.down)
    try:
        await start(gateway)
        async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=10) as client:
            yield client
    except BaseException:
        with trio.CancelScope(shield=True):
            await gateway.close()  # a failed test leaves no gateway running behind it
        raise
    finally:
        await trio.to_thread.run_sync(kafka.up)


async def delivered(kafka: PrivateKafka, topic: str, accepted: set[str]) -> list[str]:
    records = await KafkaReader(kafka.bootstrap_servers).read(
        topic, until=lambda rs: accepted <= {r.headers["event-id"].decode() for r in rs}, timeout=120, settle=1.0
    )
    return [r.headers["event-id"].decode() for r in records]


async def test_an_outage_ten_times_the_memory_bound_is_ridden_out_on_disk(
    gateway_env: dict[str, str], private_kafka: PrivateKafka, tmp_path: Path
) -> None:
    memory_bound = 500
    env = disk_env(
        gateway_env, private_kafka, tmp_path / "spool",
        APPLICATION_BUFFER_EVENTS=str(memory_bound), APPLICATION_SPOOL_BYTES=str(12_000 * 420),
        APPLICATION_DELIVERY_TIMEOUT_MS="5000",
    )
    gateway = GatewayProcess(env, log_path=str(tmp_path / "gateway.log"))
    accepted: set[str] = set()
    with trio.fail_after(300):
        async with kafka_away(private_kafka, gateway) as client:
            refused = await post_until_refused(client, accepted, size=100, limit=200)
            assert len(accepted) >= 10 * memory_bound, (len(accepted), refused.text)
            assert refused.status_code == 503 and refused.json()["error"] == "spool full", refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            # The same again: still no room while Kafka is away.
            again = await post_until_refused(client, accepted, size=100, limit=1)
            assert again.status_code == 503 and again.json()["error"] == "spool full"
        ids = await delivered(private_kafka, env["APPLICATION_TOPIC"], accepted)
        await gateway.stop()
    assert accepted <= set(ids), f"{len(accepted - set(ids))} accepted events missing"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB ext4 file system of the test's own, loop-mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small ext4 needs root (CI runs as root)")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with open(image, "wb") as file:
        file.truncate(24 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if made.returncode or mounted.returncode:
        pytest.skip(f"no loop-mounted ext4 here: {made.stderr or mounted.stderr}".strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


async def test_a_full_disk_is_a_503_then_202_again_once_space_returns_and_nothing_accepted_is_lost(
    gateway_env: dict[str, str], private_kafka: PrivateKafka, tmp_path: Path, small_disk: Path
) -> None:
    env = disk_env(gateway_env, private_kafka, small_disk / "spool", SPOOL_MIN_FREE_BYTES="0")
    filler = small_disk / "filler"
    with open(filler, "wb") as file:
        file.write(b"\0" * 8 * 1024 * 1024)
        os.fsync(file.fileno())
    gateway = GatewayProcess(env, log_path=str(tmp_path / "gateway.log"))
    accepted: set[str] = set()
    with trio.fail_after(300):
        async with kafka_away(private_kafka, gateway) as client:
            refused = await post_until_refused(client, accepted, size=200, limit=2000)
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            assert refused.json()["error"] == "spool write failed", refused.text
            ready = await client.get("/ready")
            assert ready.status_code == 503 and "spool" in ready.text, ready.text
            assert (await client.get("/health")).status_code == 200  # alive: it never exits for this
            filler.unlink()
            with trio.fail_after(30):
                while True:
                    answer = await client.post(
                        "/api/v1/logs/batch", json={"logs": [{"source": "after", "level": "INFO", "message": "m"}]}
                    )
                    if answer.status_code == 202:
                        accepted.update(answer.json()["eventIds"])
                        break
                    await trio.sleep(0.2)
        ids = await delivered(private_kafka, env["APPLICATION_TOPIC"], accepted)
        await gateway.stop()
    assert accepted <= set(ids), f"{len(accepted - set(ids))} accepted events missing"
