"""Exactly once into Kafka, through crashes and several instances; real PostgreSQL and Kafka.

The kill -9 test picks its kill points (how many transactions were accepted, and a delay after that)
with ``random.Random(seed)``. The seed is ``KILL_SEED`` when set, else a fresh one; the test prints
it and every assertion message names it, so a failure replays with ``KILL_SEED=<seed> pytest ...``
(the same kill points; the scheduling around them is the machine's).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import httpx
import psycopg
import pytest
import trio

from tests.kafka_reader import KafkaReader
from tests.processes import GatewayProcess, TransactionStream

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def wait_published(database_url: str, timeout: float = 60) -> None:
    def pending() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
        return int(row[0]) if row else -1

    with trio.fail_after(timeout):
        while await trio.to_thread.run_sync(pending):
            await trio.sleep(0.2)


def kill_seed() -> int:
    """``KILL_SEED``, or a fresh seed to print."""
    raw = os.environ.get("KILL_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


async def assert_exactly_once(kafka: KafkaReader, topic: str, accepted: set[str], context: str = "") -> None:
    records = await kafka.read(
        topic, until=lambda rs: accepted <= {r.headers["event-id"].decode() for r in rs}, timeout=90, settle=2.0
    )
    counts = Counter(r.headers["event-id"].decode() for r in records)
    missing = accepted - set(counts)
    duplicated = {event_id for event_id, n in counts.items() if n > 1}
    unexpected = set(counts) - accepted
    replay = f" ({context})" if context else ""
    assert not missing, f"{len(missing)} accepted transactions are missing from Kafka{replay}"
    assert not duplicated, f"{len(duplicated)} transactions were published more than once{replay}"
    assert not unexpected, f"{len(unexpected)} records in Kafka were never answered 202{replay}"


async def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    gateway_env: dict[str, str], kafka: KafkaReader, database_url: str, tmp_path: object
) -> None:
    gateway = GatewayProcess({**gateway_env, "OUTBOX_RELAY_BATCH": "50"}, log_path=f"{tmp_path}/gateway.log")
    stream = TransactionStream([gateway.url("transaction")], total=2000)
    seed = kill_seed()
    chance = random.Random(seed)
    kills = [(at, chance.uniform(0, 0.05)) for at in sorted(chance.sample(range(200, 1800), 3))]
    points = ", ".join(f"{at} accepted +{pause * 1000:.0f} ms" for at, pause in kills)
    replay = f"KILL_SEED={seed}: kills after {points}"
    print(replay)
    try:
        await gateway.start()

        async def killer() -> None:
            for at, pause in kills:
                while len(stream.accepted) < at:
                    await trio.sleep(0.005)
                await trio.sleep(pause)
                await gateway.kill()
                await gateway.start()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            await stream.run()
        assert len(stream.accepted) == 2000, replay
        assert stream.retries > 0, f"the kills should have cut some requests off ({replay})"
        await wait_published(database_url)
        await assert_exactly_once(kafka, gateway_env["TRANSACTION_TOPIC"], set(stream.accepted), replay)
        assert await gateway.stop() == 0, replay
    finally:
        await gateway.close()


async def leader_of(instances: list[GatewayProcess]) -> GatewayProcess:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(30):
            while True:
                for instance in instances:
                    metrics = (await client.get(f"{instance.url('transaction')}/metrics")).text
                    if 'outbox_relay_state{state="leading"} 1.0' in metrics:
                        return instance
                await trio.sleep(0.1)


async def test_two_instances_share_the_outbox_and_one_takes_over_from_the_other(
    gateway_env: dict[str, str], kafka: KafkaReader, database_url: str, tmp_path: object
) -> None:
    instances = [GatewayProcess(gateway_env, log_path=f"{tmp_path}/gateway-{i}.log") for i in range(2)]
    try:
        for instance in instances:
            await instance.start()
        leader = await leader_of(instances)
        standby = instances[1 - instances.index(leader)]
        stream = TransactionStream([i.url("transaction") for i in instances], total=1000)

        async def kill_the_leader() -> None:
            while len(stream.accepted) < 400:
                await trio.sleep(0.005)
            await leader.kill()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_the_leader)
            await stream.run()
        assert await leader_of([standby]) is standby
        await wait_published(database_url)
        await assert_exactly_once(kafka, gateway_env["TRANSACTION_TOPIC"], set(stream.accepted))
    finally:
        for instance in instances:
            await instance.close()
