"""The broker stops while rsyslog streams over TCP, and while a forward client waits for its ack: once
it is back, every message is in Kafka, and no ack was given for what Kafka did not have."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import trio

from tests.conftest import PrivateKafka
from tests.kafka_reader import KafkaReader
from tests.sockets.agents import log_lines, rsyslogd
from tests.sockets.conftest import endpoint, marker, metric, socket_env, socket_gateway  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(240)]


@pytest.fixture
def outage_env(socket_env: dict[str, str], private_kafka: PrivateKafka) -> dict[str, str]:
    return {
        **socket_env,
        "KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap_servers,
        "BREAKER_OPEN_SECONDS": "1",
        "READY_TIMEOUT": "1",
        # Longer than the outage: records in flight when it began wait for the broker, not the dead-letter topic.
        "APPLICATION_DELIVERY_TIMEOUT_MS": "180000",
        "APPLICATION_BUFFER_EVENTS": "2000",
    }


async def test_rsyslog_loses_nothing_while_the_broker_is_away(
    outage_env: dict[str, str], private_kafka: PrivateKafka, tmp_path: Path
) -> None:
    tag = marker()
    sent: list[str] = []
    async with socket_gateway(outage_env) as runtime:
        host, port = endpoint(runtime, "syslog-tcp")
        action = (
            f'action(type="omfwd" target="{host}" port="{port}" protocol="tcp" TCP_Framing="octet-counted"'
            ' template="RSYSLOG_SyslogProtocol23Format" queue.type="LinkedList" queue.size="200000"'
            ' action.resumeRetryCount="-1" action.resumeInterval="1")'
        )
        async with rsyslogd(tmp_path, action):
            stop = trio.Event()

            async def stream() -> None:
                batch = 0
                while not stop.is_set():
                    lines = [f"{tag} {batch}-{i}" for i in range(200)]
                    await log_lines(tmp_path / "log.sock", tag, lines)
                    sent.extend(lines)
                    batch += 1
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                await trio.sleep(2)
                await trio.to_thread.run_sync(private_kafka.down)
                with trio.fail_after(30):  # the stream refuses: the breaker opened or the buffer filled
                    while not (
                        metric(runtime, "producer_rejected_total", service="application", reason="breaker")
                        or metric(runtime, "producer_rejected_total", service="application", reason="full")
                    ):
                        await trio.sleep(0.1)
                await trio.sleep(3)  # rsyslog's queue holds what the gateway does not read
                await trio.to_thread.run_sync(private_kafka.up)
                await trio.sleep(2)
                stop.set()
            expected = set(sent)
            records = await KafkaReader(private_kafka.bootstrap_servers).read(
                runtime.profiles["application"].topic,
                until=lambda rs: expected <= {json.loads(r.value)["message"].strip() for r in rs if r.key == tag.encode()},
                timeout=120,
                settle=2,
            )
    messages = [json.loads(r.value)["message"].strip() for r in records if r.key == tag.encode()]
    missing = expected - set(messages)
    assert not missing, f"{len(missing)} of {len(expected)} messages are not in Kafka"
    assert metric(runtime, "syslog_dropped_total", reason="shutdown") == 0


async def test_no_forward_ack_while_kafka_does_not_have_the_chunk(
    outage_env: dict[str, str], private_kafka: PrivateKafka
) -> None:
    env = {**outage_env, "APPLICATION_DELIVERY_TIMEOUT_MS": "2000", "BREAKER_OPEN_SECONDS": "30"}
    tag = marker()
    chunk = [tag, [[1700000000, {"message": f"m{i}"}] for i in range(10)], {"chunk": "b3V0YWdl"}]
    async with socket_gateway(env) as runtime:
        address = endpoint(runtime, "forward")
        await trio.to_thread.run_sync(private_kafka.down)
        try:
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(msgspec.msgpack.encode(chunk))
                answer = b""
                with trio.move_on_after(15):
                    while data := await stream.receive_some():
                        answer += data
                assert answer == b"", "no ack for records Kafka never took"
        finally:
            await trio.to_thread.run_sync(private_kafka.up)
        assert metric(runtime, "forward_acks_total", outcome="sent") == 0
