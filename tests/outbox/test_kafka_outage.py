"""Transactions while Kafka is away: still accepted, then published exactly once."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import httpx
import pytest
import trio

from app.config import load_settings
from app.outbox.relay import RelayState
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
        # Open-ended: it runs until the outage is over, however long stopping the broker takes.
        stream = TransactionStream([url], total=1_000_000, workers=4)
        metrics = runtime.metrics.registry

        async def until(what: str, condition: Callable[[], bool], timeout: float) -> None:
            with trio.move_on_after(timeout):
                while not condition():
                    await trio.sleep(0.05)
                return
            state = {s.value: metrics.get_sample_value("outbox_relay_state", {"state": s.value}) for s in RelayState}
            raise AssertionError(
                f"not within {timeout:.0f}s: {what} ({len(stream.accepted)} accepted, {stream.retries} refused,"
                f" relay {state})"
            )

        async def outage() -> None:
            await until("300 transactions accepted", lambda: len(stream.accepted) >= 300, 60)
            await trio.to_thread.run_sync(private_kafka.down)
            during = len(stream.accepted)
            await until("500 more accepted while Kafka is down", lambda: len(stream.accepted) >= during + 500, 60)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"{url}/ready")
            assert ready.status_code == 200, "accepting transactions needs PostgreSQL only"
            # The relay reports its backlog between attempts; one attempt takes its flush and abort timeouts.
            await until("a pending backlog reported", lambda: bool(metrics.get_sample_value("outbox_pending_events")), 30)
            await until(  # its Kafka transaction times out, then it reports failing
                "the relay reports failing",
                lambda: metrics.get_sample_value("outbox_relay_state", {"state": "failing"}) == 1,
                30,
            )
            assert metrics.get_sample_value("outbox_oldest_pending_age_seconds")
            await trio.to_thread.run_sync(private_kafka.up)
            after = len(stream.accepted)
            await until("200 more accepted after Kafka is back", lambda: len(stream.accepted) >= after + 200, 60)
            stream.stop()

        async with trio.open_nursery() as inner:
            inner.start_soon(outage)
            await stream.run(deadline=300)
        assert stream.retries == 0, "no transaction was refused while Kafka was away"
        await wait_published(database_url, timeout=120)
        await assert_exactly_once(
            KafkaReader(private_kafka.bootstrap_servers), settings.transaction.topic, set(stream.accepted)
        )
        runtime.shutdown()
