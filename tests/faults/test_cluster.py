"""Brokers of a three-node cluster killed under acks=all traffic; real brokers, bounded in time."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import PrivateKafka, wait_ready
from tests.kafka_reader import KafkaReader
from tests.outbox.test_exactly_once import assert_exactly_once, wait_published
from tests.processes import TransactionStream

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_one_broker_down_is_invisible_and_two_down_only_delays_transactions(
    gateway_env: dict[str, str], private_cluster: PrivateKafka, database_url: str
) -> None:
    settings = load_settings(
        {
            **gateway_env,
            "KAFKA_BOOTSTRAP_SERVERS": private_cluster.bootstrap_servers,
            "OUTBOX_KAFKA_TIMEOUT": "5",
            "OUTBOX_RELAY_BATCH": "100",
        }
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        url = runtime.url("transaction")
        await wait_ready(url)
        # About 200/s, until the faults below are over (however long a cold cluster takes).
        stream = TransactionStream([url], total=1_000_000, workers=4, pace=0.02)
        metrics = runtime.metrics.registry

        def published() -> float:
            return metrics.get_sample_value("outbox_published_total") or 0.0

        async def faults() -> None:
            while len(stream.accepted) < 300:
                await trio.sleep(0.01)
            await trio.to_thread.run_sync(private_cluster.kill_broker, 2)
            # acks=all with two of three replicas in sync: the relay keeps publishing.
            before = published()
            with trio.fail_after(60):
                while published() < before + 200:
                    await trio.sleep(0.1)
            await trio.to_thread.run_sync(private_cluster.kill_broker, 3)
            during = len(stream.accepted)
            with trio.fail_after(60):
                while len(stream.accepted) < during + 100:
                    await trio.sleep(0.01)
            async with trio.open_nursery() as restarts:
                restarts.start_soon(trio.to_thread.run_sync, private_cluster.start_broker, 2)
                restarts.start_soon(trio.to_thread.run_sync, private_cluster.start_broker, 3)
            stream.stop()

        async with trio.open_nursery() as inner:
            inner.start_soon(faults)
            await stream.run(deadline=300)
        assert len(stream.accepted) == stream.total
        assert stream.retries == 0, "no client saw an error while brokers were down"
        await wait_published(database_url, timeout=180)
        await assert_exactly_once(
            KafkaReader(private_cluster.bootstrap_servers), settings.transaction.topic, set(stream.accepted)
        )
        runtime.shutdown()
