"""The syslog listeners over real sockets, read back from Kafka: Python's SysLogHandler over TCP and
UDP, framings mixed on one connection, TLS, backpressure, limits, hostile input and the drain."""

from __future__ import annotations

import logging
import logging.handlers
import random
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from app.dialects import syslog
from app.runtime import Runtime
from tests.kafka_reader import KafkaReader
from tests.sockets.conftest import endpoint, marker, metric, read_events, socket_gateway

pytestmark = pytest.mark.integration


def python_handler_sends(address: tuple[str, int], kind: socket.SocketKind, ident: str, count: int) -> None:
    handler = logging.handlers.SysLogHandler(address, socktype=kind)
    handler.ident = f"{ident}: "
    logger = logging.getLogger(f"syslog-test-{ident}-{kind}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for index in range(count):
            logger.warning("message %d from %s", index, ident)
    finally:
        logger.removeHandler(handler)
        handler.close()


async def test_python_sysloghandler_over_tcp_and_udp(sockets: Runtime, kafka: KafkaReader) -> None:
    tcp, udp = marker(), marker()
    await trio.to_thread.run_sync(python_handler_sends, endpoint(sockets, "syslog-tcp"), socket.SOCK_STREAM, tcp, 200)
    await trio.to_thread.run_sync(python_handler_sends, endpoint(sockets, "syslog-udp"), socket.SOCK_DGRAM, udp, 50)
    received = await read_events(kafka, sockets, key=tcp, count=200)
    assert sorted(e["message"] for e in received) == sorted(f"message {i} from {tcp}" for i in range(200))
    event = received[0]
    assert (event["source"], event["level"]) == (tcp, "WARN")
    assert event["attributes"]["syslog"]["format"] == "rfc3164"
    assert event["attributes"]["syslog"]["transport"] == "tcp"
    assert event["attributes"]["syslog"]["peer"].startswith("127.0.0.1:")
    assert len(await read_events(kafka, sockets, key=udp, count=50)) == 50
    assert metric(sockets, "gateway_ingest_events_total", service="application", dialect="syslog", outcome="accepted") == 250


async def send_tcp(address: tuple[str, int], payload: bytes, *, wait_close: bool = False) -> bytes:
    """Send ``payload``, half-close, and return what the server sent until it closed."""
    stream = await trio.open_tcp_stream(*address)
    received = b""
    async with stream:
        try:
            await stream.send_all(payload)
            await stream.send_eof()
            with trio.fail_after(10):
                while data := await stream.receive_some():
                    received += data
        except trio.BrokenResourceError:  # closed with our bytes unread: a reset
            pass
    return received


def octet(message: bytes) -> bytes:
    return b"%d %s" % (len(message), message)


async def test_framings_mixed_on_one_connection(sockets: Runtime, kafka: KafkaReader) -> None:
    key = marker()
    app = key.encode()
    payload = (
        octet(b"<165>1 2003-10-11T22:14:15.003Z host " + app + b' 7 ID1 [a@1 k="v\\]"] \xef\xbb\xbfcounted')
        + b"<13>Oct 11 22:14:15 host " + app + b": lf\n"
        + b"<13>Oct 11 22:14:15 host " + app + b": crlf\r\n"
        + b"<13>Oct 11 22:14:15 host " + app + b": nul\x00"
        + octet(b"<13>1 - host " + app + b" - - - counted\nwith a newline")
    )
    await send_tcp(endpoint(sockets, "syslog-tcp"), payload)
    received = await read_events(kafka, sockets, key=key, count=5)
    assert sorted(e["message"] for e in received) == sorted(["counted", "lf", "crlf", "nul", "counted\nwith a newline"])
    first = next(e for e in received if e["message"] == "counted")
    assert first["attributes"]["syslog"]["structuredData"] == {"a@1": {"k": "v]"}}
    assert first["timestamp"] == "2003-10-11T22:14:15.003000Z"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_tls(socket_env: dict[str, str], kafka: KafkaReader, tmp_path: Path) -> None:
    from tests.processes import free_port

    cert, key = make_certificate(tmp_path)
    env = {**socket_env, "SYSLOG_TLS_PORT": str(free_port()), "SYSLOG_TLS_CERT_FILE": str(cert), "SYSLOG_TLS_KEY_FILE": str(key)}
    async with socket_gateway(env) as runtime:
        name = marker()
        context = ssl.create_default_context(cafile=str(cert))
        host, port = endpoint(runtime, "syslog-tls")
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context, https_compatible=True)
        async with stream:
            await stream.send_all(b"".join(octet(b"<14>1 - h %s - - - tls %d" % (name.encode(), i)) for i in range(20)))
        assert len(await read_events(kafka, runtime, key=name, count=20)) == 20
        # A client that does not speak TLS is closed, the listener goes on.
        assert await send_tcp((host, port), b"<13>plain text\n") == b""


async def test_tls_serves_a_rotated_certificate_to_new_connections_and_keeps_open_ones(
    socket_env: dict[str, str], kafka: KafkaReader, tmp_path: Path
) -> None:
    from tests.pki import make_pki, serial_of
    from tests.processes import free_port

    pki = make_pki(tmp_path)
    env = {
        **socket_env, "SYSLOG_TLS_PORT": str(free_port()), "TLS_RELOAD_INTERVAL": "0.2",
        "SYSLOG_TLS_CERT_FILE": str(pki.cert_file), "SYSLOG_TLS_KEY_FILE": str(pki.key_file),
    }
    async with socket_gateway(env) as runtime:
        name = marker()
        host, port = endpoint(runtime, "syslog-tls")

        async def connect() -> tuple[int, trio.SSLStream[trio.SocketStream]]:
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=pki.client_context())
            await stream.do_handshake()
            return serial_of(stream.getpeercert(binary_form=True)), stream

        before, opened = await connect()
        await opened.send_all(octet(b"<14>1 - h %s - - - before" % name.encode()))
        rotated = pki.issue_server()  # no SIGHUP here: the files' change is seen within TLS_RELOAD_INTERVAL
        with trio.fail_after(10):
            while True:
                now, fresh = await connect()
                if now == rotated:
                    break
                await fresh.aclose()
                await trio.sleep(0.1)
        async with fresh:
            await fresh.send_all(octet(b"<14>1 - h %s - - - after" % name.encode()))
        async with opened:  # made before the rotation, it goes on
            await opened.send_all(octet(b"<14>1 - h %s - - - still open" % name.encode()))
        assert before != rotated
        received = await read_events(kafka, runtime, key=name, count=3)
        assert sorted(e["message"] for e in received) == ["after", "before", "still open"]


async def test_tcp_waits_while_the_stream_refuses_and_udp_counts_what_it_drops(
    socket_env: dict[str, str], kafka: KafkaReader
) -> None:
    # 100 events a second, a burst of 100: the stream answers 429 as a client floods it.
    env = {**socket_env, "APPLICATION_RATE_LIMIT": "100", "MAX_BATCH_EVENTS": "50"}
    async with socket_gateway(env) as runtime:
        tcp, udp = marker(), marker()
        lines = b"".join(b"<13>1 - - %s - - - n%d\n" % (tcp.encode(), i) for i in range(400))
        with trio.fail_after(30):
            await send_tcp(endpoint(runtime, "syslog-tcp"), lines)
        received = await read_events(kafka, runtime, key=tcp, count=400)
        assert sorted(e["message"] for e in received) == sorted(f"n{i}" for i in range(400))
        assert metric(runtime, "producer_throttled_total", service="application") > 0  # it did have to wait
        assert metric(runtime, "syslog_dropped_total", reason="rate_limited") == 0

        await trio.sleep(1.5)  # the bucket fills up again
        sock = trio.socket.socket(type=socket.SOCK_DGRAM)
        with sock:
            for i in range(400):
                await sock.sendto(b"<13>1 - - %s - - - u%d" % (udp.encode(), i), endpoint(runtime, "syslog-udp"))
        await trio.sleep(1.0)
        dropped = metric(runtime, "syslog_dropped_total", reason="rate_limited")
        assert dropped > 0
        taken = metric(runtime, "gateway_ingest_events_total", service="application", dialect="syslog", outcome="accepted")
        assert taken - 400 + dropped == 400  # every datagram either taken or counted
        assert len(await read_events(kafka, runtime, key=udp, count=int(400 - dropped))) == 400 - dropped


async def test_connection_limit_and_idle_timeout(socket_env: dict[str, str], kafka: KafkaReader) -> None:
    env = {**socket_env, "SYSLOG_MAX_CONNECTIONS": "100", "SYSLOG_IDLE_TIMEOUT": "1.5"}
    async with socket_gateway(env) as runtime:
        address = endpoint(runtime, "syslog-tcp")

        def closed(reason: str) -> float:
            return metric(runtime, "socket_connections_closed_total", listener="syslog-tcp", reason=reason)

        idle = [await trio.open_tcp_stream(*address) for _ in range(1000)]
        try:
            # Every connection is either held or closed for the limit once the listener has taken them all
            # (bounded: on a busy machine that takes longer than the idle timeout, so held ones may be idle-closed).
            def held() -> float:
                return metric(runtime, "socket_connections", listener="syslog-tcp") + closed("idle")

            with trio.fail_after(10):
                while held() + closed("limit") < 1000:
                    await trio.sleep(0.1)
            assert held() == 100
            assert closed("limit") == 900
            # The health of the process: its HTTP listener answers meanwhile.
            import httpx

            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{runtime.url('application')}/ready")).status_code == 200
            with trio.fail_after(10):
                while metric(runtime, "socket_connections", listener="syslog-tcp"):
                    await trio.sleep(0.2)
            assert closed("idle") == 100
        finally:
            for stream in idle:
                await stream.aclose()
        name = marker()
        await send_tcp(address, b"<13>1 - - %s - - - after\n" % name.encode())
        assert [e["message"] for e in await read_events(kafka, runtime, key=name, count=1)] == ["after"]


def expected_frames(payload: bytes, limit: int) -> tuple[list[bytes], bool]:
    """What the listener passes on from one connection: the whole frames before any framing error."""
    framer = syslog.Framer(limit)
    framer.receive_data(payload)
    frames = []
    try:
        while (frame := framer.next_frame()) is not None:
            frames.append(frame)
    except syslog.FramingError:
        return frames, True
    return frames, False


async def test_hostile_input_passes_on_only_whole_frames(socket_env: dict[str, str], kafka: KafkaReader) -> None:
    limit = 1024
    env = {**socket_env, "SYSLOG_MAX_MESSAGE_BYTES": str(limit)}
    key = marker()
    tagged = key.encode()
    rng = random.Random(4852)
    payloads = [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))) for _ in range(20)
    ] + [
        b"50 <13>1 - - " + tagged + b" - - - the count says 50 but the connection ends first",  # a lying count, short
        b"5 <13>1 - - " + tagged + b" - - - longer than its count\n",  # a count too small: the rest is a line
        b"<13>1 - - " + tagged + b" - - - a line never terminated",
        b"99999999 <13>",  # a count over the limit: closed at once
        b"<13>" + b"x" * 2000 + b"\n",  # a line over the limit
        b"\x00\n\r\n" * 100,
    ]
    async with socket_gateway(env) as runtime:
        address = endpoint(runtime, "syslog-tcp")
        expected: list[bytes] = []
        for payload in payloads:
            frames, _ = expected_frames(payload, limit)
            expected += frames
            closed = await send_tcp(address, payload)
            assert closed == b""
        mine = [frame for frame in expected if syslog.log_event(syslog.parse(frame), None, "tcp").source == key]
        good = marker()
        await send_tcp(address, b"<13>1 - - %s - - - still healthy\n" % good.encode())
        assert [e["message"] for e in await read_events(kafka, runtime, key=good, count=1)] == ["still healthy"]
        received = await read_events(kafka, runtime, key=key, count=len(mine), settle=1.0)
        assert sorted(e["message"] for e in received) == sorted(syslog.parse(f).message for f in mine)
        total = metric(runtime, "gateway_ingest_events_total", service="application", dialect="syslog", outcome="accepted")
        assert total == len(expected) + 1  # every whole frame, nothing of a partial one
        assert metric(runtime, "syslog_dropped_total", reason="truncated") >= 2
        assert metric(runtime, "socket_connections_closed_total", listener="syslog-tcp", reason="too_large") == 2


async def test_graceful_shutdown_drains_what_was_received(socket_env: dict[str, str], kafka: KafkaReader) -> None:
    key = marker()
    async with socket_gateway({**socket_env, "GRACEFUL_TIMEOUT": "3"}) as runtime:
        stream = await trio.open_tcp_stream(*endpoint(runtime, "syslog-tcp"))
        await stream.send_all(b"".join(b"<13>1 - - %s - - - d%d\n" % (key.encode(), i) for i in range(2000)))
        runtime.shutdown()  # at once: the bytes sit in the socket, not yet read
    await stream.aclose()
    received = await read_events(kafka, runtime, key=key, count=2000)
    assert len(received) == 2000
