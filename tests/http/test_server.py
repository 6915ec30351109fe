"""The HTTP listeners over TLS with real clients (curl, httpx; HTTP/1.1 and HTTP/2), mutual TLS and its
identities, certificate reloads, connections the server code cannot make stop a listener, and connections
a client closed, which the server closes at once."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import ssl
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import h2.connection
import h2.events
import h11
import httpx
import psutil
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from app.config import Settings, load_settings
from app.runtime import Runtime, run
from tests.kafka_reader import KafkaReader
from tests.pki import Pki, make_pki, serial_of
from tests.processes import GatewayProcess

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@asynccontextmanager
async def serving(settings: Settings, context: ssl.SSLContext, *listeners: str) -> AsyncIterator[Runtime]:
    """A gateway in this process, once ``listeners`` answer /ready over TLS with ``context``."""
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, settings, handle_signals=False))
        async with httpx.AsyncClient(verify=context, timeout=5) as client:
            with trio.fail_after(60):
                for listener in listeners:
                    while (await client.get(f"{runtime.url(listener)}/ready")).status_code != 200:
                        await trio.sleep(0.1)
        yield runtime
        runtime.shutdown()


def log(source: str, message: str) -> dict[str, str]:
    return {"source": source, "level": "INFO", "message": message}


def ndjson(source: str, count: int, prefix: str) -> bytes:
    return b"".join(json.dumps(log(source, f"{prefix}-{n}")).encode() + b"\n" for n in range(count))


async def curl(*args: str) -> str:
    done = await trio.run_process(["curl", "--silent", "--show-error", "--max-time", "10", *args], capture_stdout=True)
    return done.stdout.decode()


async def served_serial(port: int, context: ssl.SSLContext) -> tuple[int, trio.SSLStream[trio.SocketStream]]:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context, https_compatible=True)
    await stream.do_handshake()
    return serial_of(stream.getpeercert(binary_form=True)), stream


async def test_curl_and_httpx_over_tls_on_http_1_1_and_http_2(
    gateway_env: dict[str, str], pki: Pki, kafka: KafkaReader
) -> None:
    settings = load_settings({**gateway_env, **pki.env()})
    context = pki.client_context()
    source = f"tls-{uuid.uuid4().hex[:8]}"
    async with serving(settings, context, "application", "gateway") as runtime:
        application, gateway = runtime.url("application"), runtime.url("gateway")
        assert application.startswith("https://") and gateway.startswith("https://")
        async with httpx.AsyncClient(verify=context) as http1, httpx.AsyncClient(verify=context, http2=True) as http2:
            one = await http1.post(f"{application}/api/v1/logs", json=log(source, "httpx-1.1"))
            two = await http2.post(f"{gateway}/api/v1/logs", json=log(source, "httpx-2"))
            # Answered before the body is read, over HTTP/2: the connection serves the next request.
            refused = await http2.put(f"{gateway}/api/v1/logs", content=b"x" * 300_000)
            wrong_type = await http2.post(f"{gateway}/api/v1/logs", content=b"x" * 300_000, headers={"Content-Type": "text/csv"})
            after = await http2.post(f"{gateway}/api/v1/logs", json=log(source, "httpx-2-after"))
        assert (one.http_version, one.status_code) == ("HTTP/1.1", 202)
        assert (two.http_version, two.status_code) == ("HTTP/2", 202)
        assert (refused.status_code, refused.headers["allow"], "connection" in refused.headers) == (405, "POST", False)
        assert (wrong_type.status_code, after.http_version, after.status_code) == (415, "HTTP/2", 202)

        for version, url, message in (("--http2", application, "curl-2"), ("--http1.1", gateway, "curl-1.1")):
            written = await curl(
                version, "--cacert", str(pki.ca_file), "-H", "Content-Type: application/json",
                "-d", json.dumps(log(source, message)), "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                f"{url}/api/v1/logs",
            )
            assert written == f"{version.removeprefix('--http')} 202"

        # Plain HTTP to a TLS port: no HTTP answer (at most the TLS alert), and the listener serves on.
        port = int(application.rsplit(":", 1)[1])
        for _ in range(20):
            with trio.fail_after(5):
                plain = await trio.open_tcp_stream("127.0.0.1", port)
                await plain.send_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
                answered = b""
                while chunk := await plain.receive_some(65536):
                    answered += chunk
                await plain.aclose()
            assert b"HTTP/" not in answered and (answered == b"" or answered[0] == 0x15), answered[:40]
        async with httpx.AsyncClient(verify=context) as client:
            assert (await client.get(f"{application}/health")).status_code == 200

    records = await kafka.read(settings.application.topic, count=5, settle=1.0)  # settling: nothing else, nothing twice
    messages = sorted(json.loads(r.value)["message"] for r in records if r.key == source.encode())
    assert messages == sorted(["httpx-1.1", "httpx-2", "httpx-2-after", "curl-2", "curl-1.1"]) and len(records) == 5


async def test_http_2_with_prior_knowledge_cannot_stop_a_plain_listener(gateway: Runtime) -> None:
    """hypercorn's HTTP/2 code fails on DATA for a stream it has answered: past the body limit, that ends
    the connection only; below it, the pipeline takes the rest of the body first and the connection serves on."""
    url = gateway.url("application")
    async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as prior_knowledge:
        refused = await prior_knowledge.put(f"{url}/api/v1/logs", content=b"x" * 300_000)
        assert (refused.http_version, refused.status_code) == ("HTTP/2", 405)
        try:
            too_large = await prior_knowledge.post(
                f"{url}/api/v1/logs", content=b"x" * (gateway.settings.max_request_bytes + 1_000_000),
                headers={"Content-Type": "application/json"},
            )
            assert too_large.status_code == 413
        except httpx.TransportError:
            pass  # the connection reset by hypercorn's HTTP/2 code
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{url}/health")).status_code == 200
        assert (await client.post(f"{url}/api/v1/logs", json=log("after-h2", "m"))).status_code == 202


async def test_mutual_tls_refuses_strangers_and_a_certificate_stands_for_its_key(
    gateway_env: dict[str, str], pki: Pki, kafka: KafkaReader
) -> None:
    settings = load_settings(
        {**gateway_env, **pki.env(mutual=True), "API_KEYS": "agent::0.5:CN=agent-1,team:team-secret", "MAX_BATCH_EVENTS": "5"}
    )
    agent = pki.client("agent-1")
    stranger = pki.client("agent-2")  # signed by the client CA, bound to no key
    impostor = pki.client("agent-1", ca=pki.other_ca)  # the right name, the wrong CA
    source = f"mtls-{uuid.uuid4().hex[:8]}"
    async with serving(settings, pki.client_context(stranger), "application") as runtime:
        url = f"{runtime.url('application')}/api/v1/logs"
        for refused in (pki.client_context(), pki.client_context(impostor)):
            async with httpx.AsyncClient(verify=refused) as client:
                with pytest.raises(httpx.TransportError):
                    await client.post(url, json=log(source, "refused"))

        # curl with the agent's certificate and no key: the certificate is the key (5 tokens, 0.5 a second).
        written = await curl(
            "--cacert", str(pki.ca_file), "--cert", str(agent), "-H", "Content-Type: application/json",
            "-d", json.dumps(log(source, "curl")), "-o", "/dev/null", "-w", "%{http_code}", url,
        )
        assert written == "202"
        batch = f"{runtime.url('application')}/api/v1/logs/batch"
        ndjson_type = {"Content-Type": "application/x-ndjson"}
        async with httpx.AsyncClient(verify=pki.client_context(agent)) as client:
            within = await client.post(batch, content=ndjson(source, 4, "within"), headers=ndjson_type)
            over = await client.post(batch, content=ndjson(source, 4, "over"), headers=ndjson_type)
            header_wins = await client.post(
                batch, content=ndjson(source, 4, "team"), headers={**ndjson_type, "Authorization": "Bearer team-secret"}
            )
        async with httpx.AsyncClient(verify=pki.client_context(stranger)) as client:
            unbound = await client.post(url, json=log(source, "unbound"))
        assert within.status_code == 202
        assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1, over.text
        assert header_wins.status_code == 202, "the Authorization header decides: the team key has no quota"
        assert unbound.status_code == 401

    records = await kafka.read(settings.application.topic, count=9, settle=1.0)
    messages = sorted(json.loads(r.value)["message"] for r in records)
    assert messages == sorted(["curl", *(f"within-{n}" for n in range(4)), *(f"team-{n}" for n in range(4))])


async def test_a_reload_serves_new_connections_the_new_certificate_and_keeps_open_ones(
    gateway_env: dict[str, str], pki: Pki
) -> None:
    settings = load_settings({**gateway_env, **pki.env(), "TLS_RELOAD_INTERVAL": "0.2"})
    context = pki.client_context()
    async with serving(settings, context, "application") as runtime:
        assert runtime.tls is not None
        port = int(runtime.url("application").rsplit(":", 1)[1])
        before, opened = await served_serial(port, context)
        assert before == runtime.tls.pair.serial

        second = pki.issue_server()
        assert runtime.tls.reload()  # what SIGHUP does
        await opened.send_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        with trio.fail_after(5):
            answer = await opened.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 200"), "the connection opened before the reload still answers"
        await opened.aclose()
        now, fresh = await served_serial(port, context)
        await fresh.aclose()
        assert now == second != before

        third = pki.issue_server()  # no reload asked: the files' change is seen within TLS_RELOAD_INTERVAL
        with trio.fail_after(10):
            while now != third:
                await trio.sleep(0.1)
                now, fresh = await served_serial(port, context)
                await fresh.aclose()


async def test_sighup_reloads_the_certificate_of_a_gateway_process(gateway_env: dict[str, str], pki: Pki) -> None:
    env = {**gateway_env, **pki.env(), "TLS_LISTENERS": "application", "TLS_RELOAD_INTERVAL": "0", "LOG_LEVEL": "WARNING"}
    process = GatewayProcess(env)
    context = pki.client_context()
    try:
        await process.start("transaction")  # plain: only the application listener is in TLS_LISTENERS
        before, stream = await served_serial(process.ports["application"], context)
        await stream.aclose()
        new = pki.issue_server()
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            while True:
                now, stream = await served_serial(process.ports["application"], context)
                await stream.aclose()
                if now == new:
                    break
                await trio.sleep(0.1)
        assert before != new
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{process.url('gateway')}/health")).status_code == 200
        assert await process.stop() == 0
    finally:
        await process.close()


def accepted_sockets(port: int) -> set[str]:
    """This process's sockets the server accepted on ``port`` (the clients' are on other ports), by their
    ``socket:[inode]`` names, which :func:`still_held` finds again once the kernel no longer lists them by port."""
    found = set()
    for connection in psutil.Process().net_connections("tcp"):
        if connection.laddr.port == port and connection.status != "LISTEN":
            with contextlib.suppress(OSError):
                found.add(os.readlink(f"/proc/self/fd/{connection.fd}"))
    return found


def still_held(sockets: set[str]) -> set[str]:
    """Those of ``sockets`` a file descriptor of this process still holds. (A reset socket leaves the kernel's
    table of connections at once; its descriptor, and what the server keeps for it, stay until it is closed.)"""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.add(os.readlink(f"/proc/self/fd/{fd}"))
    return sockets & held


LOG, JSON = json.dumps(log("closed-by-client", "m")).encode(), {"Content-Type": "application/json"}


async def keep_alive_request(stream: Stream) -> None:
    """A log event posted on ``stream`` (as the benchmark's hey posts them) and the whole answer read, the
    connection kept alive as clients keep it. (Quart's routes, /health, cancel their own answer's last step,
    which would start the keep-alive timer: it is the ingest routes' connections that waited for it.)"""
    client = h11.Connection(h11.CLIENT)
    headers = [("Host", "gateway"), ("Content-Type", "application/json"), ("Content-Length", str(len(LOG)))]
    request = h11.Request(method="POST", target="/api/v1/logs", headers=headers)
    await stream.send_all(client.send(request) + client.send(h11.Data(data=LOG)) + client.send(h11.EndOfMessage()))
    status = 0
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
    assert status == 202


async def http2_request(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """:func:`keep_alive_request` over HTTP/2 (ALPN h2)."""
    assert stream.selected_alpn_protocol() == "h2"
    client = h2.connection.H2Connection()
    client.initiate_connection()
    headers = [
        (":method", "POST"), (":path", "/api/v1/logs"), (":scheme", "https"), (":authority", "gateway"),
        ("content-type", "application/json"), ("content-length", str(len(LOG))),
    ]
    client.send_headers(1, headers)
    client.send_data(1, LOG, end_stream=True)
    status, ended = b"", False
    while not ended:
        await stream.send_all(client.data_to_send())
        data = await stream.receive_some(65536)
        assert data, "the server closed the connection"
        for event in client.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers or [])[b":status"]
            ended = ended or isinstance(event, h2.events.StreamEnded)
    await stream.send_all(client.data_to_send())
    assert status == b"202"


def reset(stream: Stream) -> None:
    """Make the socket's close a TCP reset: no FIN, no close_notify."""
    sock = stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def opened_mid_handshake(port: int, context: ssl.SSLContext) -> trio.SocketStream:
    """A connection whose client sent its ClientHello and read the server's answer, and goes no further."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    outgoing = ssl.MemoryBIO()
    handshake = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    await stream.send_all(outgoing.read())
    assert (await stream.receive_some(65536))[:1] == b"\x16", "the server's handshake record"
    return stream


def ended_connections() -> list[object]:
    """The server's connection objects this process still has (with the cyclic collector off, those that wait
    for it too): hypercorn's TCPServer of each, and the server side of each TLS connection."""
    return [o for o in gc.get_objects() if isinstance(o, TCPServer) or (isinstance(o, ssl.SSLObject) and o.server_side)]


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_connections_a_client_closed_are_closed_and_freed_by_the_server_at_once(
    gateway_env: dict[str, str], pki: Pki, tls: bool
) -> None:
    """Well before the keep-alive timeout (75 s), whatever way the client went: a TLS close_notify, a FIN without
    one, a reset, after a request or none, over HTTP/1.1 or HTTP/2, in the middle of the handshake, or an httpx
    client closed. And what the server kept for them (its TLS state included) is freed as they end, not left
    for the cyclic garbage collector, which the gateway's process runs seldom: it is off during the test."""
    settings = load_settings({**gateway_env, **(pki.env() if tls else {})})
    context, http2_context = pki.client_context(), pki.client_context()
    http2_context.set_alpn_protocols(["h2"])
    per_way = 5
    async with serving(settings, context, "application") as runtime:
        url = runtime.url("application")
        port = int(url.rsplit(":", 1)[1])
        closes: list[Callable[[], Awaitable[None]]] = []

        async def opened_tls(client_context: ssl.SSLContext = context) -> trio.SSLStream[trio.SocketStream]:
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client_context)
            await stream.do_handshake()
            return stream

        async def opened() -> Stream:
            return await opened_tls() if tls else await trio.open_tcp_stream("127.0.0.1", port)

        gc.collect()
        gc.disable()
        try:
            with trio.fail_after(30):
                for _ in range(per_way):
                    served = await opened()
                    await keep_alive_request(served)
                    closes.append(served.aclose)  # over TLS: close_notify first (trio's SSLStream sends it)
                    if tls:
                        closes.append((with_fin := await opened_tls()).transport_stream.aclose)  # no close_notify
                        await keep_alive_request(with_fin)
                    reset(with_reset := await opened())
                    await keep_alive_request(with_reset)
                    closes.append(with_reset.aclose)
                    closes.append((await opened()).aclose)  # no request at all
                    if tls:
                        await http2_request(over_h2 := await opened_tls(http2_context))
                        closes.append(over_h2.transport_stream.aclose)  # no GOAWAY, no close_notify
                        closes.append((await opened_mid_handshake(port, context)).aclose)
                for http2 in (False, True):
                    async with httpx.AsyncClient(verify=context, http2=http2, timeout=5) as client:
                        assert (await client.post(f"{url}/api/v1/logs", content=LOG, headers=JSON)).status_code == 202
                accepted = accepted_sockets(port)
                assert len(accepted) >= len(closes), "every connection above is open on the server"

            for close in closes:
                await close()
            with trio.move_on_after(5):
                while still_held(accepted):
                    await trio.sleep(0.1)
            left = still_held(accepted)
            assert not left, f"{len(left)} of the {len(accepted)} sockets the clients closed still open on the server"
            ended = ended_connections()
            assert not ended, f"{len(ended)} objects of ended connections wait for the cyclic garbage collector"
        finally:
            gc.enable()
        async with httpx.AsyncClient(verify=context, timeout=5) as client:
            assert (await client.get(f"{url}/health")).status_code == 200, "the listener serves on"
