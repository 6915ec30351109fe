"""Transactions while Kafka is away: still accepted, then published exactly once."""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import PrivateKafka, wait_ready
from tests.kafka_reader import KafkaReader
from tests.outbox.test_exactly_once import assert_exactly_once, wait_published
from tests.processes import TransactionStream

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_a_broker_outage_delays_transactions_but_loses_and_duplicates_none(
    gateway_env: dict[str, str], private_kafka: PrivateKafka, database_url: str
) -> None:
    settings = load_settings(
        {**gateway_env, "KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap_servers, "OUTBOX_KAFKA_TIMEOUT": "5"}
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        url = runtime.url("transaction")
        await wait_ready(url)
        stream = TransactionStream([url], total=1500, workers=4)

        async def outage() -> None:
            while len(stream.accepted) < 300:
                await trio.sleep(0.005)
            await trio.to_thread.run_sync(private_kafka.down)
            during = len(stream.accepted)
            with trio.fail_after(60):
                while len(stream.accepted) < during + 500:
                    await trio.sleep(0.01)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"{url}/ready")
            assert ready.status_code == 200, "accepting transactions needs PostgreSQL only"
            metrics = runtime.metrics.registry
            with trio.fail_after(10):
                while not metrics.get_sample_value("outbox_pending_events"):
                    await trio.sleep(0.1)
            with trio.fail_after(20):  # its Kafka transaction times out, then it reports failing
                while metrics.get_sample_value("outbox_relay_state", {"state": "failing"}) != 1:
                    await trio.sleep(0.1)
            assert metrics.get_sample_value("outbox_oldest_pending_age_seconds")
            await trio.to_thread.run_sync(private_kafka.up)

        async with trio.open_nursery() as inner:
            inner.start_soon(outage)
            await stream.run()
        assert stream.retries == 0, "no transaction was refused while Kafka was away"
        await wait_published(database_url, timeout=120)
        await assert_exactly_once(
            KafkaReader(private_kafka.bootstrap_servers), settings.transaction.topic, set(stream.accepted)
        )
        runtime.shutdown()
