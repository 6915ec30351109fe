"""The gateway over TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) to a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import httpx
import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import ROOT, PrivateKafka, wait_ready
from tests.kafka_reader import KafkaReader

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PORT_BASE = 19292
# (security protocol, SASL mechanism, listener port offset), as scripts/infra.py opens them with KAFKA_SECURE=1
CASES = [
    ("SASL_PLAINTEXT", "PLAIN", 10),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256", 10),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512", 10),
    ("SSL", "", 11),
    ("SASL_SSL", "SCRAM-SHA-512", 12),
]


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(ROOT / ".local" / "secure-kafka", port_base=PORT_BASE, secure=True)
    kafka.up()
    yield kafka
    kafka.down()


def security_env(kafka: PrivateKafka, protocol: str, mechanism: str, offset: int, password: str) -> dict[str, str]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{PORT_BASE + offset}", "KAFKA_SECURITY_PROTOCOL": protocol}
    if mechanism:
        env |= {"KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": "gateway", "KAFKA_SASL_PASSWORD": password}
    if "SSL" in protocol:
        env["KAFKA_SSL_CA_LOCATION"] = str(kafka.directory / "tls" / "ca.pem")
    return env


def reader_config(env: dict[str, str]) -> dict[str, str]:
    names = {
        "KAFKA_SECURITY_PROTOCOL": "security.protocol", "KAFKA_SASL_MECHANISM": "sasl.mechanism",
        "KAFKA_SASL_USERNAME": "sasl.username", "KAFKA_SASL_PASSWORD": "sasl.password",
        "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    }
    return {names[key]: value for key, value in env.items() if key in names}


@pytest.mark.parametrize(("protocol", "mechanism", "offset"), CASES)
async def test_logs_and_transactions_reach_a_secured_broker(
    gateway_env: dict[str, str], secure_kafka: PrivateKafka, protocol: str, mechanism: str, offset: int
) -> None:
    security = security_env(secure_kafka, protocol, mechanism, offset, "gateway-secret")
    settings = load_settings({**gateway_env, **security})
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        await wait_ready(runtime.url("application"))
        async with httpx.AsyncClient() as client:
            log = await client.post(f"{runtime.url('application')}/api/v1/logs", json={"source": "s", "level": "INFO", "message": protocol})
            tx = await client.post(
                f"{runtime.url('transaction')}/api/v1/transactions",
                json={"userId": "u", "type": "PAYMENT", "amount": "1.00", "currency": "USD"},
            )
        assert log.status_code == 202 and tx.status_code == 202
        reader = KafkaReader(security["KAFKA_BOOTSTRAP_SERVERS"], reader_config(security))
        [log_record] = await reader.read(settings.application.topic, count=1)
        [tx_record] = await reader.read(settings.transaction.topic, count=1)
        assert log_record.headers["event-id"].decode() == log.json()["eventId"]
        assert tx_record.headers["event-id"].decode() == tx.json()["eventId"]
        runtime.shutdown()


async def test_a_wrong_password_is_not_ready(gateway_env: dict[str, str], secure_kafka: PrivateKafka) -> None:
    security = security_env(secure_kafka, "SASL_PLAINTEXT", "SCRAM-SHA-256", 10, "wrong")
    settings = load_settings({**gateway_env, **security, "READY_TIMEOUT": "1"})
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        async with httpx.AsyncClient() as client:
            with trio.fail_after(10):
                ready = await client.get(f"{runtime.url('application')}/ready")
        assert ready.status_code == 503
        runtime.shutdown()
