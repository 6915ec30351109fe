"""Syslog clients nobody here wrote, each counted exactly in Kafka: util-linux logger (TCP octet-counted
RFC 5424, TCP RFC 3164, UDP), rsyslog's omfwd over TCP (octet-counted) and over TLS (gtls), and
syslog-ng's syslog() over TCP and network() over UDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from app.runtime import Runtime
from tests.kafka_reader import KafkaReader
from tests.processes import free_port
from tests.sockets.agents import log_lines, rsyslogd, syslog_ng
from tests.sockets.conftest import endpoint, marker, read_events, socket_gateway
from tests.sockets.test_syslog import make_certificate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    ("options", "listener", "format"),
    [
        (["--tcp", "--octet-count", "--rfc5424"], "syslog-tcp", "rfc5424"),
        (["--tcp", "--rfc3164"], "syslog-tcp", "rfc3164"),
        (["--udp", "--rfc5424"], "syslog-udp", "rfc5424"),
    ],
    ids=["tcp-octet-counted-5424", "tcp-3164", "udp-5424"],
)
async def test_logger(sockets: Runtime, kafka: KafkaReader, options: list[str], listener: str, format: str) -> None:
    tag = marker()
    host, port = endpoint(sockets, listener)
    lines = [f"logger line {i}" for i in range(100)]
    sd = ["--sd-id", "zoo@32473", "--sd-param", 'tiger="hungry"'] if format == "rfc5424" else []
    with trio.fail_after(30):
        await trio.run_process(
            ["logger", "--server", host, "--port", str(port), *options, "-t", tag, "-p", "daemon.err", *sd],
            stdin=("\n".join(lines) + "\n").encode(),
        )
    received = await read_events(kafka, sockets, key=tag, count=100)
    assert sorted(e["message"] for e in received) == sorted(lines)
    event = received[0]["attributes"]["syslog"]
    assert (received[0]["level"], event["format"], event["facility"], event["severity"]) == ("ERROR", format, "daemon", "err")
    if format == "rfc5424":
        assert event["structuredData"]["zoo@32473"] == {"tiger": "hungry"}


async def test_rsyslog_omfwd_tcp_octet_counted(sockets: Runtime, kafka: KafkaReader, tmp_path: Path) -> None:
    tag = marker()
    host, port = endpoint(sockets, "syslog-tcp")
    action = (
        f'action(type="omfwd" target="{host}" port="{port}" protocol="tcp" TCP_Framing="octet-counted"'
        ' template="RSYSLOG_SyslogProtocol23Format")'
    )
    async with rsyslogd(tmp_path, action):
        await log_lines(tmp_path / "log.sock", tag, [f"rsyslog {i}" for i in range(500)], priority="local3.warning")
        received = await read_events(kafka, sockets, key=tag, count=500)
    assert sorted(e["message"].strip() for e in received) == sorted(f"rsyslog {i}" for i in range(500))
    assert {(e["level"], e["attributes"]["syslog"]["facility"]) for e in received} == {("WARN", "local3")}


async def test_rsyslog_omfwd_tls(socket_env: dict[str, str], kafka: KafkaReader, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    env = {**socket_env, "SYSLOG_TLS_PORT": str(free_port()), "SYSLOG_TLS_CERT_FILE": str(cert), "SYSLOG_TLS_KEY_FILE": str(key)}
    async with socket_gateway(env) as runtime:
        tag = marker()
        _, port = endpoint(runtime, "syslog-tls")
        action = (
            f'action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" StreamDriver="gtls"'
            ' StreamDriverMode="1" StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="localhost")'
        )
        async with rsyslogd(tmp_path / "rsyslog", action, tls_ca=cert):
            await log_lines(tmp_path / "rsyslog" / "log.sock", tag, [f"over tls {i}" for i in range(200)])
            received = await read_events(kafka, runtime, key=tag, count=200)
        assert sorted(e["message"] for e in received) == sorted(f"over tls {i}" for i in range(200))
        assert received[0]["attributes"]["syslog"]["transport"] == "tls"


@pytest.mark.parametrize(
    ("destination", "listener"),
    [
        ('syslog("{host}" port({port}) transport("tcp"))', "syslog-tcp"),
        ('network("{host}" port({port}) transport("udp"))', "syslog-udp"),
    ],
    ids=["syslog-tcp", "network-udp"],
)
async def test_syslog_ng(sockets: Runtime, kafka: KafkaReader, tmp_path: Path, destination: str, listener: str) -> None:
    tag = marker()
    host, port = endpoint(sockets, listener)
    async with syslog_ng(tmp_path, destination.format(host=host, port=port)):
        lines = [f"syslog-ng {i}" for i in range(200)]
        for start in range(0, 200, 50):  # a datagram socket: in slices, not to overflow its queue
            await log_lines(tmp_path / "log.sock", tag, lines[start : start + 50], priority="auth.info")
            await trio.sleep(0.05)
        received = await read_events(kafka, sockets, key=tag, count=200)
    assert sorted(e["message"] for e in received) == sorted(lines)
    event = received[0]["attributes"]["syslog"]
    assert (received[0]["level"], event["facility"], event["format"]) == (
        "INFO", "auth", "rfc5424" if listener == "syslog-tcp" else "rfc3164",
    )
