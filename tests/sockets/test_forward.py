"""The forward listener over real sockets, read back from Kafka: fluent-logger (PyPI), PackedForward
gzip chunks built to the specification with acks, the shared-key handshake, and bombs."""

from __future__ import annotations

import gzip
import hashlib
import struct

import msgspec
import pytest
import trio
from fluent import sender

from app.runtime import Runtime
from tests.kafka_reader import KafkaReader
from tests.sockets.conftest import endpoint, marker, metric, read_events, socket_gateway

pytestmark = pytest.mark.integration
pack = msgspec.msgpack.encode


def fluent_logger_sends(address: tuple[str, int], tag: str, count: int, nanoseconds: bool) -> None:
    logger = sender.FluentSender("app", host=address[0], port=address[1], nanosecond_precision=nanoseconds, timeout=5)
    try:
        for index in range(count):
            assert logger.emit(tag, {"message": f"event {index}", "level": "error", "user": index}), logger.last_error
    finally:
        logger.close()


@pytest.mark.parametrize("nanoseconds", [False, True], ids=["integer-time", "event-time"])
async def test_fluent_logger(sockets: Runtime, kafka: KafkaReader, nanoseconds: bool) -> None:
    tag = marker()
    await trio.to_thread.run_sync(fluent_logger_sends, endpoint(sockets, "forward"), tag, 100, nanoseconds)
    received = await read_events(kafka, sockets, key=f"app.{tag}", count=100)
    assert sorted(e["message"] for e in received) == sorted(f"event {i}" for i in range(100))
    event = received[0]
    assert event["level"] == "ERROR" and event["source"] == f"app.{tag}"
    assert event["attributes"]["forward"]["tag"] == f"app.{tag}"
    assert set(event["attributes"]["forward"]["record"]) == {"user"}


def event_time(seconds: int, nanoseconds: int) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(0, struct.pack(">II", seconds, nanoseconds))


def compressed_chunk(tag: str, count: int, chunk: str) -> bytes:
    """CompressedPackedForward as Fluentd writes it: entries in gzip members, the option saying gzip."""
    entries = [pack([event_time(1700000000 + i, 1000 * i), {"log": f"line {i}", "severity": "debug"}]) for i in range(count)]
    half = count // 2
    body = gzip.compress(b"".join(entries[:half])) + gzip.compress(b"".join(entries[half:]))
    return pack([tag, body, {"size": count, "compressed": "gzip", "chunk": chunk}])


async def receive_value(stream: trio.SocketStream, timeout: float = 20) -> object:
    buffer = b""
    with trio.fail_after(timeout):
        while True:
            data = await stream.receive_some()
            if not data:
                raise EOFError("closed before an answer")
            buffer += data
            try:
                return msgspec.msgpack.decode(buffer)
            except msgspec.DecodeError:
                continue


async def test_compressed_packed_forward_is_acked_once_in_kafka(sockets: Runtime, kafka: KafkaReader) -> None:
    tag = marker()
    stream = await trio.open_tcp_stream(*endpoint(sockets, "forward"))
    async with stream:
        for n, chunk in enumerate(("Y2h1bmsxMjM0NTY3OA==", "Y2h1bmsyMjM0NTY3OA==")):
            payload = compressed_chunk(tag, 500, chunk)
            # Byte by byte in places: the message arrives across many reads.
            for start in range(0, len(payload), 997):
                await stream.send_all(payload[start : start + 997])
            assert await receive_value(stream) == {"ack": chunk}
            # Acked means in Kafka: all of it is there already.
            received = await read_events(kafka, sockets, key=tag, count=500 * (n + 1), settle=0, timeout=5)
            assert len(received) == 500 * (n + 1)
    assert sorted(e["message"] for e in received) == sorted([f"line {i}" for i in range(500)] * 2)
    assert {e["level"] for e in received} == {"DEBUG"}
    assert metric(sockets, "forward_acks_total", outcome="sent") == 2


async def test_the_shared_key_handshake_over_a_socket(socket_env: dict[str, str], kafka: KafkaReader) -> None:
    async with socket_gateway({**socket_env, "FORWARD_SHARED_KEY": "s3cret"}) as runtime:
        address = endpoint(runtime, "forward")
        tag = marker()
        for key, accepted in (("wrong", False), ("s3cret", True)):
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                helo = await receive_value(stream)
                assert isinstance(helo, list) and helo[0] == "HELO"
                nonce, salt = helo[1]["nonce"], b"salt"
                digest = hashlib.sha512(salt + b"client" + nonce + key.encode()).hexdigest()
                await stream.send_all(pack(["PING", "client", salt, digest, "", ""]))
                pong = await receive_value(stream)
                assert isinstance(pong, list) and pong[:2] == ["PONG", accepted]
                if not accepted:
                    assert await stream.receive_some() == b""
                    continue
                server = pong[3].encode()
                assert pong[4] == hashlib.sha512(salt + server + nonce + key.encode()).hexdigest()
                await stream.send_all(pack([tag, 1700000000, {"message": "authenticated"}, {"chunk": "abc"}]))
                assert await receive_value(stream) == {"ack": "abc"}
        assert [e["message"] for e in await read_events(kafka, runtime, key=tag, count=1)] == ["authenticated"]
        assert metric(runtime, "socket_connections_closed_total", listener="forward", reason="handshake") == 1


async def test_bombs_close_the_connection_and_nothing_of_them_reaches_kafka(
    socket_env: dict[str, str], kafka: KafkaReader
) -> None:
    env = {**socket_env, "FORWARD_MAX_MESSAGE_BYTES": "65536", "MAX_DECOMPRESSED_BYTES": "1000000"}
    async with socket_gateway(env) as runtime:
        address = endpoint(runtime, "forward")
        tag = marker()
        bombs = [
            b"\xdd\xff\xff\xff\xff" + b"\x01" * 70_000,  # an array of 4 billion elements
            b"\x91" * 5000,  # nesting
            pack([tag, gzip.compress(b"\0" * 50_000_000), {"compressed": "gzip", "chunk": "x"}]),  # a gzip bomb
            pack([tag, pack([1, {"message": "whole"}]) + b"\x92\x01", {"chunk": "y"}]),  # entries cut short
            b"\xc1" + pack([tag, 1, {"message": "after garbage"}]),
        ]
        for bomb in bombs:
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                try:
                    await stream.send_all(bomb)
                    with trio.fail_after(10):
                        assert await stream.receive_some() == b""  # closed, no ack
                except trio.BrokenResourceError:
                    pass
        good = marker()
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(pack([good, 1, {"message": "healthy"}, {"chunk": "z"}]))
            assert await receive_value(stream) == {"ack": "z"}
        assert len(await read_events(kafka, runtime, key=good, count=1)) == 1
        assert await read_events(kafka, runtime, key=tag, count=0, settle=1.0) == []
        assert metric(runtime, "gateway_ingest_events_total", service="application", dialect="forward", outcome="accepted") == 1
