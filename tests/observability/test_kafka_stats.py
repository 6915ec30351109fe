"""librdkafka statistics, readiness and the loss counters on /metrics."""

from __future__ import annotations

import json
import uuid
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings, load_settings
from app.observability.kafka_stats import KafkaStatistics
from app.runtime import Runtime, run
from tests.processes import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def broker(name: str, nodeid: int, *, rtt_count: int, txretries: int = 0) -> dict[str, Any]:
    return {
        "name": name, "nodeid": nodeid, "source": "learned" if nodeid >= 0 else "configured", "state": "UP",
        "outbuf_cnt": 2, "waitresp_cnt": 5, "txretries": txretries, "tx": 40, "rx": 39,
        "rtt": {"min": 100, "max": 9000, "avg": 1500, "p50": 1200, "p99": 8000, "p99_99": 9000, "cnt": rtt_count},
    }


STATISTICS = json.dumps(
    {
        "name": "kafka-log-gateway-application#producer-1", "type": "producer", "msg_cnt": 12, "msg_size": 3456,
        "tx": 80, "rx": 78, "topics": {"application-logs": {"partitions": {}}},
        "brokers": {
            "127.0.0.1:9092/bootstrap": broker("127.0.0.1:9092/bootstrap", -1, rtt_count=1, txretries=1),
            "127.0.0.1:9092/1": broker("127.0.0.1:9092/1", 1, rtt_count=17, txretries=3),
            "127.0.0.1:9094/2": broker("127.0.0.1:9094/2", 2, rtt_count=0),
        },
    }
)


def scrape(collector: KafkaStatistics) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(generate_latest(registry).decode())


def test_statistics_become_metrics_per_service_and_cluster_broker() -> None:
    stats = KafkaStatistics()
    stats.watch("application", lambda: STATISTICS)
    found = scrape(stats)
    assert value(found, "kafka_client_queue_messages", service="application") == 12
    assert value(found, "kafka_client_queue_bytes", service="application") == 3456
    assert value(found, "kafka_client_retries_total", service="application") == 4  # every broker's txretries
    assert value(found, "kafka_client_requests_total", service="application") == 80
    assert value(found, "kafka_client_responses_total", service="application") == 78
    b1 = {"service": "application", "broker": "127.0.0.1:9092/1"}
    assert value(found, "kafka_broker_rtt_seconds", **b1, quantile="0.5") == pytest.approx(0.0012)
    assert value(found, "kafka_broker_rtt_seconds", **b1, quantile="0.99") == pytest.approx(0.008)
    assert value(found, "kafka_broker_rtt_average_seconds", **b1) == pytest.approx(0.0015)
    assert value(found, "kafka_broker_outbuf_requests", **b1) == 2
    assert value(found, "kafka_broker_waitresp_requests", **b1) == 5
    # A broker with no request in the window has no round trip; the bootstrap entry is not a broker.
    b2 = {"service": "application", "broker": "127.0.0.1:9094/2"}
    assert value(found, "kafka_broker_waitresp_requests", **b2) == 5
    assert value(found, "kafka_broker_rtt_seconds", **b2, quantile="0.99") is None
    brokers = {dict(labels).get("broker") for (_, labels) in found}
    assert brokers == {None, "127.0.0.1:9092/1", "127.0.0.1:9094/2"}


def test_a_stream_s_two_producers_are_exported_as_one_client() -> None:
    quiet = json.loads(STATISTICS)
    quiet.update(msg_cnt=1, msg_size=100, tx=5, rx=5)
    quiet["brokers"]["127.0.0.1:9092/1"] = broker("127.0.0.1:9092/1", 1, rtt_count=2, txretries=1)
    quiet["brokers"]["127.0.0.1:9092/1"]["rtt"].update(p50=50_000, p99=90_000, avg=60_000)
    stats = KafkaStatistics()
    stats.watch("application", lambda: (STATISTICS, json.dumps(quiet)))
    found = scrape(stats)
    assert value(found, "kafka_client_queue_messages", service="application") == 13
    assert value(found, "kafka_client_queue_bytes", service="application") == 3556
    assert value(found, "kafka_client_requests_total", service="application") == 85
    assert value(found, "kafka_client_retries_total", service="application") == 4 + 2
    b1 = {"service": "application", "broker": "127.0.0.1:9092/1"}
    assert value(found, "kafka_broker_waitresp_requests", **b1) == 10
    # The round trip of the producer that made most requests in the window (17 against 2).
    assert value(found, "kafka_broker_rtt_seconds", **b1, quantile="0.99") == pytest.approx(0.008)


def test_nothing_is_exported_before_the_first_statistics_or_for_a_broken_string() -> None:
    latest: list[str | None] = [None]
    stats = KafkaStatistics()
    stats.watch("infrastructure", lambda: latest[0])
    assert scrape(stats) == {}
    latest[0] = "{not json"
    assert scrape(stats) == {}
    latest[0] = STATISTICS
    assert value(scrape(stats), "kafka_client_queue_messages", service="infrastructure") == 12


def test_a_statistics_string_is_decoded_once_however_often_it_is_scraped(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.observability import kafka_stats

    decoded: list[str] = []
    decode = kafka_stats._decode

    def counting(raw: str) -> Any:
        decoded.append(raw)
        return decode(raw)

    monkeypatch.setattr(kafka_stats, "_decode", counting)
    latest = [STATISTICS]
    stats = KafkaStatistics()
    stats.watch("application", lambda: latest[0])
    for _ in range(4):
        scrape(stats)
    latest[0] = STATISTICS.replace('"msg_cnt": 12', '"msg_cnt": 13')
    assert value(scrape(stats), "kafka_client_queue_messages", service="application") == 13
    assert len(decoded) == 2


# -- on the real broker ------------------------------------------------------------------------------


@pytest.fixture
def settings(gateway_env: dict[str, str]) -> Settings:
    return load_settings({**gateway_env, "KAFKA_STATISTICS_INTERVAL_MS": "200"})


async def scrape_listener(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    return samples(response.text)


@pytest.mark.integration
async def test_the_producers_statistics_reach_metrics(gateway: Runtime) -> None:
    transaction = {"userId": "u-1", "type": "PAYMENT", "amount": "12.50", "currency": "EUR"}
    async with httpx.AsyncClient(timeout=5) as client:
        found: Samples = {}
        with trio.fail_after(30):
            while True:
                for url, body in (
                    (gateway.url("application"), {"source": "stats", "level": "INFO", "message": "tick"}),
                    (gateway.url("infrastructure"), {"host": "h", "metric": "system.load_average", "value": 0.5}),
                ):
                    path = "/api/v1/logs" if "source" in body else "/api/v1/metrics"
                    assert (await client.post(f"{url}{path}", json=body)).status_code == 202
                answer = await client.post(
                    f"{gateway.url('transaction')}/api/v1/transactions", json=transaction,
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
                assert answer.status_code == 202
                found = await scrape_listener(client, gateway.url("application"))
                rtts = {
                    service: [
                        v for (name, labels), v in found.items()
                        if name == "kafka_broker_rtt_seconds" and ("service", service) in labels
                        and ("quantile", "0.99") in labels
                    ]
                    for service in ("application", "infrastructure")
                }
                # The relay's producer is served only while it publishes: its latest window may be idle.
                relay_requests = value(found, "kafka_client_requests_total", service="transaction") or 0
                if relay_requests > 0 and all(any(v > 0 for v in values) for values in rtts.values()):
                    break
                await trio.sleep(0.2)
    for service in ("application", "infrastructure", "transaction"):
        assert value(found, "kafka_client_queue_messages", service=service) is not None
        assert value(found, "kafka_client_queue_bytes", service=service) is not None
        assert (value(found, "kafka_client_requests_total", service=service) or 0) > 0
        assert value(found, "kafka_client_retries_total", service=service) is not None
    # Labelled by the cluster's broker name, nothing else.
    brokers = {dict(labels)["broker"] for (name, labels) in found if name.startswith("kafka_broker_")}
    assert brokers and all("/" in b and not b.endswith("/bootstrap") for b in brokers)


@pytest.mark.integration
async def test_readiness_and_the_loss_counters_are_exported_from_the_start(gateway: Runtime) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        found = await scrape_listener(client, gateway.url("gateway"))
    for listener in ("gateway", "application", "infrastructure", "transaction"):
        # The fixture waited for every listener's /ready to answer 200.
        assert value(found, "gateway_ready", listener=listener) == 1
    for service, profile in (("application", gateway.settings.application),
                             ("infrastructure", gateway.settings.infrastructure)):
        assert value(found, "kafka_producer_lost_total", service=service) == 0
        assert value(found, "kafka_producer_dead_letter_total", service=service, topic=profile.topic) == 0


async def test_a_listener_that_is_not_ready_reports_0() -> None:
    # No broker answers at this address: the application shipper cannot become ready.
    settings = load_settings(
        {
            "HOST": "127.0.0.1", "APPLICATION_PORT": "0", "ROLES": "application", "COLLECTOR_INTERVAL": "0",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "READY_TIMEOUT": "0.5", "FLUSH_TIMEOUT": "2",
            "SYSLOG_PORT": "0", "FORWARD_PORT": "0", "OTLP_GRPC_PORT": "0",
        }
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        async with httpx.AsyncClient(timeout=5) as client:
            # Evaluated without anybody asking /ready: the GatewayNotReady alert needs no load balancer.
            with trio.fail_after(5):
                while value(found := await scrape_listener(client, runtime.url("application")), "gateway_ready",
                            listener="application") is None:
                    await trio.sleep(0.1)
            assert (await client.get(f"{runtime.url('application')}/ready")).status_code == 503
        runtime.shutdown()
    assert value(found, "gateway_ready", listener="application") == 0
