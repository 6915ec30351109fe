"""A fatal librdkafka error on the application producer, against the real broker.

The error is fabricated with librdkafka's own testing API (tests/librdkafka.py), which
takes the same path as a real fatal error: the client purges the records it has not sent
yet, and confluent-kafka raises the error from the next poll or flush (not through
``error_cb``). An idempotent producer, the only kind that meets real fatal errors, also
refuses every record after it; a plain acks=1 one goes on sending. Either way the profile
must open its breaker, replace the producer, close the breaker again by itself, and land
every event it answered 202 for in the topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import confluent_kafka
import httpx
import pytest
import trio

from app.config import Settings, load_settings
from app.core import Record
from app.kafka.producer import Deliveries, KafkaProducer
from app.runtime import Runtime, profile_producer_config
from tests import librdkafka
from tests.conftest import Infra
from tests.kafka_reader import KafkaReader

pytestmark = pytest.mark.integration

OPEN_SECONDS = 3.0


@pytest.fixture(params=["acks-1", "idempotent"])
def settings(request: pytest.FixtureRequest, gateway_env: dict[str, str]) -> Settings:
    """The application profile as shipped (acks=1), and idempotent, where real fatal errors happen.

    A long linger keeps the first records queued in librdkafka when the fatal error strikes.
    """
    env = {**gateway_env, "APPLICATION_LINGER_MS": "5000", "BREAKER_OPEN_SECONDS": str(OPEN_SECONDS)}
    if request.param == "idempotent":
        env |= {"APPLICATION_ACKS": "all", "APPLICATION_IDEMPOTENCE": "true"}
    return load_settings(env)


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout}s: {what}")


def confluent_producers(runtime: Runtime) -> list[confluent_kafka.Producer]:
    """The stream's librdkafka clients: the reporting one, and the one of the records nobody follows."""
    adapter = runtime.profiles["application"]._producer
    assert isinstance(adapter, KafkaProducer)
    producers = adapter._producers()
    assert len(producers) == 2 and all(isinstance(p, confluent_kafka.Producer) for p in producers)
    return producers


def log(n: int, phase: str) -> dict[str, str]:
    return {"source": f"fatal-{n % 3}", "level": "INFO", "message": f"{phase} {n}"}


async def post_one(client: httpx.AsyncClient, n: int, phase: str) -> str:
    response = await client.post("/api/v1/logs", json=log(n, phase))
    assert response.status_code == 202, response.text
    event_id: str = response.json()["eventId"]
    return event_id


async def test_a_fatal_error_replaces_the_producer_and_loses_no_accepted_event(
    gateway: Runtime, kafka: KafkaReader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    profile = gateway.profiles["application"]
    client_id = f"{gateway.settings.kafka_client_id}-application"
    metrics = gateway.metrics.registry
    topic = profile.topic
    old = confluent_producers(gateway)  # kept referenced: their rd_kafka_t stay valid for the checks below
    old_rks = [librdkafka.client_handle(producer, client_id) for producer in old]
    accepted: list[str] = []

    with trio.fail_after(90):
        async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=10) as client:
            # Queued: handed to librdkafka and lingering there when the error strikes.
            response = await client.post("/api/v1/logs/batch", json={"logs": [log(n, "queued") for n in range(20)]})
            assert response.status_code == 202, response.text
            accepted += response.json()["eventIds"]
            await wait_until(lambda: sum(len(producer) for producer in old) == 20, "the batch is in librdkafka's queue")

            # Hold the poll loop so the profile cannot see the error yet: the records accepted
            # meanwhile go to the failed producers, as in the moment before a real error is polled.
            # Both of the stream's clients fail, so that every record meets the error.
            async with profile._poll_limiter:
                for producer, rk in zip(old, old_rks):
                    librdkafka.trigger_fatal_error(producer, client_id, "injected by the fatal-error test")
                    assert librdkafka.fatal_error(rk) == ("_FENCED", "test_fatal_error: injected by the fatal-error test")
                for n in range(10):
                    accepted.append(await post_one(client, n, "window"))
                await wait_until(lambda: profile._receive.statistics().current_buffer_used == 0, "handed over")

            await wait_until(lambda: confluent_producers(gateway)[0] is not old[0], "the producer is replaced")
            assert profile.breaker.state.name == "OPEN"
            refused = await client.post("/api/v1/logs", json=log(0, "refused"))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "kafka unavailable"
            assert 1 <= int(refused.headers["Retry-After"]) <= OPEN_SECONDS
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert any("fatal producer error _FENCED" in reason for reason in ready.json()["reasons"]), ready.text
            assert metrics.get_sample_value("producer_circuit_breaker_state", {"service": "application"}) == 1

            new_rks = [librdkafka.client_handle(producer, client_id) for producer in confluent_producers(gateway)]
            names = {librdkafka.library().rd_kafka_name(rk) for rk in old_rks + new_rks}
            assert len(names) == 4, "two new clients, none of the old ones"
            assert all(librdkafka.fatal_error(rk) is None for rk in new_rks)
            assert all(librdkafka.fatal_error(rk) is not None for rk in old_rks)

            # Nobody closes it: the probe does, once BREAKER_OPEN_SECONDS have passed.
            await wait_until(lambda: profile.breaker.state.name == "CLOSED", "the breaker closes by itself")
            assert (await client.get("/ready")).status_code == 200
            for n in range(10):
                accepted.append(await post_one(client, n, "after"))

        records = await kafka.read(
            topic, until=lambda got: {r.headers["event-id"].decode() for r in got} >= set(accepted), timeout=30, settle=1.0
        )
        await wait_until(lambda: profile.buffered_events == 0 and not profile._retired, "every event is settled")
        dead = await kafka.read(profile.dead_letter_topic, timeout=2.0, settle=1.0)

    delivered = [r.headers["event-id"].decode() for r in records]
    assert set(delivered) == set(accepted), "every event answered 202 is in the topic"
    assert len(delivered) == len(accepted) == 40
    assert dead == []
    assert metrics.get_sample_value("kafka_producer_success_total", {"service": "application", "topic": topic}) == 40
    assert not metrics.get_sample_value("kafka_producer_lost_total", {"service": "application"})
    assert not metrics.get_sample_value("kafka_producer_dead_letter_total", {"service": "application", "topic": topic})

    def errors(name: str) -> float:
        return metrics.get_sample_value(
            "kafka_producer_error_total", {"service": "application", "topic": topic, "error": name}
        ) or 0.0

    # The queued batch was purged by the error and sent again; so were the records the failed
    # producer took meanwhile, if it purged them too. An idempotent producer refuses new records
    # outright after a fatal error; the acks=1 one goes on sending them itself.
    assert errors("_PURGE_QUEUE") >= 20
    if gateway.settings.application.idempotence:
        assert errors("_PURGE_QUEUE") + errors("_FATAL") == 30
    else:
        assert errors("_FATAL") == 0
    assert metrics.get_sample_value("kafka_client_error_total", {"service": "application", "error": "_FENCED"}) == 2
    assert metrics.get_sample_value("producer_rejected_total", {"service": "application", "reason": "breaker"}) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "application producer: _FENCED: test_fatal_error: injected by the fatal-error test" in messages
    assert messages.count("application: producer recreated after a fatal error") == 1, "once for both clients"
    assert "application: Kafka answers again; circuit breaker closed" in messages


async def test_the_adapter_reports_a_fatal_error_that_flush_raises(settings: Settings) -> None:
    """At shutdown, ``flush`` meets the error (as a SystemError when a delivery report follows it)."""
    client_id = f"{settings.kafka_client_id}-application"
    producer = KafkaProducer(profile_producer_config(settings, "application"))
    records = [Record(b"k", b"value %d" % n, []) for n in range(5)]
    # The topic does not exist (no gateway created it): the records wait in librdkafka's queue.
    assert producer.produce(settings.application.topic, records) == (5, [])
    librdkafka.trigger_fatal_error(producer._producers()[0], client_id, "raised from flush")

    reports = Deliveries()
    with trio.fail_after(20):
        while len(reports.failures) < 5:
            deliveries, remaining = await trio.to_thread.run_sync(producer.flush, 5.0)
            reports.failures += deliveries.failures
            reports.client_errors += deliveries.client_errors
    assert remaining == 0
    assert reports.client_errors == [("_FENCED", "test_fatal_error: raised from flush", True)]
    assert sorted(f.record.value for f in reports.failures) == sorted(r.value for r in records)
    assert {f.error for f in reports.failures} == {"_PURGE_QUEUE"}


def test_the_handle_is_refused_unless_librdkafka_names_the_expected_client(infra: Infra) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": infra.kafka_bootstrap_servers, "client.id": "named"})
    rk = librdkafka.client_handle(producer, "named")
    assert librdkafka.fatal_error(rk) is None
    with pytest.raises(librdkafka.LayoutMismatch, match=r"rd_kafka_name\(\) gave b'named#producer-\d+'"):
        librdkafka.client_handle(producer, "other")
    with pytest.raises(librdkafka.LayoutMismatch, match="not a confluent_kafka.Producer"):
        librdkafka.client_handle(object(), "named")  # type: ignore[arg-type]  # the wrong type on purpose
