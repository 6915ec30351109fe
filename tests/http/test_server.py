"""The HTTP listeners over TLS with real clients (curl, httpx; HTTP/1.1 and HTTP/2), mutual TLS and its
identities, certificate reloads, and connections the server code cannot make stop a listener."""

from __future__ import annotations

import json
import signal
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from app.config import Settings, load_settings
from app.runtime import Runtime, run
from tests.kafka_reader import KafkaReader
from tests.pki import Pki, make_pki, serial_of
from tests.processes import GatewayProcess

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
