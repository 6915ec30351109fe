"""The listeners' TLS: its settings, the files' checks at start-up, reloads and client certificates' names."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509

from app.config import SettingsError, load_settings
from app.tls import ServerTLS, identities, load_syslog_tls, load_tls, watch_tls
from tests.conftest import ROOT
from tests.pki import Pki, make_pki, serial_of


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def listeners_tls(env: dict[str, str]) -> ServerTLS:
    tls = load_tls(load_settings(env))
    assert tls is not None
    return tls


async def served_serial(tls: ServerTLS, client: ssl.SSLContext) -> int:
    """The serial of the certificate a new handshake with ``tls`` is served, over an in-memory stream."""
    _, client_stream = await connected(tls, client)
    return serial_of(client_stream.getpeercert(binary_form=True))


def test_certificate_and_key_go_together_and_mutual_tls_needs_both() -> None:
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        load_settings({"TLS_CERT_FILE": "server.pem"})
    with pytest.raises(SettingsError, match="TLS_CLIENT_CA_FILE needs TLS_CERT_FILE"):
        load_settings({"TLS_CLIENT_CA_FILE": "ca.pem"})
    with pytest.raises(SettingsError, match="TLS_LISTENERS"):
        load_settings({"TLS_LISTENERS": "gateway,syslog"})
    with pytest.raises(SettingsError, match="OTLP_GRPC_PORT"):
        load_settings({"OTLP_GRPC_PORT": "70000"})


def test_which_listeners_serve_tls_and_syslog_takes_the_same_files() -> None:
    both = {"TLS_CERT_FILE": "s.pem", "TLS_KEY_FILE": "s.key"}
    settings = load_settings({**both, "TLS_LISTENERS": "gateway, otlp-grpc"})
    assert [name for name in ("gateway", "application", "transaction", "otlp-grpc") if settings.tls_on(name)] == [
        "gateway", "otlp-grpc",
    ]
    assert not load_settings({}).tls_on("gateway")
    assert (settings.syslog_tls_cert_file, settings.syslog_tls_key_file) == ("s.pem", "s.key")
    own = load_settings({**both, "SYSLOG_TLS_CERT_FILE": "syslog.pem", "SYSLOG_TLS_KEY_FILE": "syslog.key"})
    assert (own.syslog_tls_cert_file, own.syslog_tls_key_file) == ("syslog.pem", "syslog.key")


def bad_files(pki: Pki, tmp_path: Path) -> dict[str, tuple[dict[str, str], str]]:
    other = pki.ca.issue_cert("elsewhere.test")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    good = pki.env()
    return {
        "missing certificate": ({**good, "TLS_CERT_FILE": str(tmp_path / "absent.pem")}, "TLS_CERT_FILE .*absent.pem: cannot be read"),
        "certificate not PEM": ({**good, "TLS_CERT_FILE": str(tmp_path / "junk.pem")}, "TLS_CERT_FILE .*junk.pem: no PEM certificate"),
        "missing key": ({**good, "TLS_KEY_FILE": str(tmp_path / "absent.key")}, "TLS_KEY_FILE .*absent.key: cannot be read"),
        "key not PEM": ({**good, "TLS_KEY_FILE": str(tmp_path / "junk.pem")}, "TLS_KEY_FILE .*junk.pem: not a PEM private key"),
        "key of another certificate": (
            {**good, "TLS_KEY_FILE": str(tmp_path / "other.key")}, "TLS_KEY_FILE .*other.key is not the key of TLS_CERT_FILE",
        ),
        "client CA not PEM": ({**pki.env(mutual=True), "TLS_CLIENT_CA_FILE": str(tmp_path / "junk.pem")}, "TLS_CLIENT_CA_FILE .*junk.pem"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing certificate", "certificate not PEM", "missing key", "key not PEM", "key of another certificate", "client CA not PEM"],
)
def test_a_file_that_cannot_serve_is_named_with_its_setting(pki: Pki, tmp_path: Path, case: str) -> None:
    env, message = bad_files(pki, tmp_path)[case]
    with pytest.raises(SettingsError, match=message):
        load_tls(load_settings(env))


def test_the_process_does_not_start_and_says_why_in_one_line(pki: Pki, tmp_path: Path) -> None:
    env, _ = bad_files(pki, tmp_path)["key of another certificate"]
    done = subprocess.run(
        [sys.executable, "-m", "app"], env={"PATH": "/usr/bin:/bin", **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("configuration error: TLS_KEY_FILE ") and "is not the key of TLS_CERT_FILE" in line


def test_tls_1_2_is_the_least_and_http_2_is_offered(pki: Pki) -> None:
    tls = listeners_tls(pki.env())
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not tls.mutual and tls.context.verify_mode == ssl.CERT_NONE


async def handshake_failures(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> list[str]:
    """Which sides of an in-memory handshake failed."""
    server_end, client_end = trio.testing.memory_stream_pair()
    sides = {
        "server": trio.SSLStream(server_end, server_context, server_side=True),
        "client": trio.SSLStream(client_end, client_context, server_hostname="localhost"),
    }
    failed: list[str] = []

    async def attempt(side: str) -> None:
        try:
            await sides[side].do_handshake()
        except trio.BrokenResourceError:
            failed.append(side)
            await trio.aclose_forcefully(sides[side])

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "server")
            nursery.start_soon(attempt, "client")
    return sorted(failed)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_a_tls_1_1_client_is_refused(pki: Pki) -> None:
    tls = listeners_tls(pki.env())
    old = pki.client_context()
    old.set_ciphers("DEFAULT@SECLEVEL=0")  # let the client offer what the server must refuse
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert "server" in await handshake_failures(tls.context, old)
    lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the same client, to a server that allows TLS 1.1
    lenient.set_ciphers("DEFAULT@SECLEVEL=0")
    lenient.minimum_version = ssl.TLSVersion.TLSv1
    lenient.load_cert_chain(pki.cert_file, pki.key_file)
    if not await handshake_failures(lenient, old):  # where this OpenSSL can speak TLS 1.1 at all
        assert "server" in await handshake_failures(tls.context, old)


async def test_a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old(pki: Pki, tmp_path: Path) -> None:
    tls = listeners_tls(pki.env())
    context = tls.context
    first = await served_serial(tls, pki.client_context())
    assert first == tls.pair.serial and not tls.changed()

    second = pki.issue_server()
    assert tls.changed()
    assert tls.reload() and tls.generation == 1
    assert tls.context is not context, "a new context for new handshakes: open connections keep theirs"
    assert await served_serial(tls, pki.client_context()) == second == tls.pair.serial

    other = pki.ca.issue_cert("elsewhere.test")
    other.private_key_pem.write_to_path(str(pki.key_file))  # a rotation half done: the key of another certificate
    assert not tls.reload()
    assert await served_serial(tls, pki.client_context()) == second and tls.generation == 1


async def test_the_watch_reloads_on_request_and_when_the_files_change(pki: Pki) -> None:
    tls = listeners_tls(pki.env())
    requests, received = trio.open_memory_channel[None](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_tls, [tls], received, 0.05)
        new = pki.issue_server()
        with trio.fail_after(5):
            while tls.pair.serial != new:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_tls, [tls], received, 0)  # SIGHUP only
        newer = pki.issue_server()
        await trio.sleep(0.2)
        assert tls.pair.serial == new, "no polling"
        requests.send_nowait(None)
        with trio.fail_after(5):
            while tls.pair.serial != newer:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


def test_a_certificate_is_known_by_its_common_name_and_alternative_names() -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("agent-1.clients.test", "10.1.2.3", "ops@example.test", common_name="agent-1")
    certificate = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
    assert identities(certificate) == {"CN=agent-1", "DNS:agent-1.clients.test", "IP:10.1.2.3", "email:ops@example.test"}


def trust(pki: Pki, *cas: trustme.CA) -> None:
    """Make TLS_CLIENT_CA_FILE the bundle of ``cas``, swapped in whole as a rotation should."""
    fresh = pki.client_ca_file.with_suffix(".new")
    fresh.write_bytes(b"".join(ca.cert_pem.bytes() for ca in cas))
    os.replace(fresh, pki.client_ca_file)


Ends = tuple[trio.SSLStream[Any], trio.SSLStream[Any]]


async def connected(tls: ServerTLS, client: ssl.SSLContext) -> Ends:
    """Both ends of an in-memory connection whose handshake with ``tls`` is done."""
    server_end, client_end = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_end, tls.context, server_side=True)
    client_stream = trio.SSLStream(client_end, client, server_hostname="localhost")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client_stream.do_handshake)
    return server, client_stream


async def still_talks(server: trio.SSLStream[Any], client: trio.SSLStream[Any]) -> bool:
    with trio.fail_after(5):
        await client.send_all(b"ping")
        ping = await server.receive_some(4)
        await server.send_all(b"pong")
        return ping == b"ping" and await client.receive_some(4) == b"pong"


async def test_a_reload_trusts_the_new_client_ca_bundle_alone_and_open_connections_stay(pki: Pki) -> None:
    tls = listeners_tls(pki.env(mutual=True))
    old_agent, new_agent = pki.client("agent-1"), pki.client("agent-1", ca=pki.other_ca)
    assert await handshake_failures(tls.context, pki.client_context(old_agent)) == []
    assert "server" in await handshake_failures(tls.context, pki.client_context(new_agent))
    held = await connected(tls, pki.client_context(old_agent))

    trust(pki, pki.client_ca, pki.other_ca)  # a rotation's first step: both CAs
    assert tls.changed(), "the client CA file is watched too"
    assert tls.reload() and tls.generation == 1
    assert tls.client_ca is not None and pki.other_ca.cert_pem.bytes() in tls.client_ca, "what gRPC is handed"
    for agent in (old_agent, new_agent):
        assert await handshake_failures(tls.context, pki.client_context(agent)) == []

    trust(pki, pki.other_ca)  # then the old CA removed
    assert tls.reload()
    assert await handshake_failures(tls.context, pki.client_context(new_agent)) == []
    assert "server" in await handshake_failures(tls.context, pki.client_context(old_agent)), "a removed CA's client"
    assert await still_talks(*held), "a connection made before the reloads is not dropped"

    (pki.directory / "junk.pem").write_text("not a certificate\n")
    os.replace(pki.directory / "junk.pem", pki.client_ca_file)
    assert not tls.reload() and tls.generation == 2, "a bundle that cannot serve keeps the one in use"
    assert await handshake_failures(tls.context, pki.client_context(new_agent)) == []
    assert "server" in await handshake_failures(tls.context, pki.client_context(old_agent))


def test_syslog_takes_the_listeners_files_without_their_client_ca_or_names_its_own(pki: Pki, tmp_path: Path) -> None:
    syslog_on = {"SYSLOG_TLS_PORT": "6514", "ROLES": "application"}
    tls = load_syslog_tls(load_settings({**pki.env(mutual=True), **syslog_on}))
    assert tls is not None and not tls.mutual, "syslog senders have no certificate"
    assert tls.context.verify_mode == ssl.CERT_NONE
    assert load_syslog_tls(load_settings({**pki.env(), **syslog_on, "SYSLOG_TLS_PORT": "0"})) is None
    assert load_syslog_tls(load_settings({**pki.env(), **syslog_on, "ROLES": "infrastructure"})) is None, "not hosted"
    own = {"SYSLOG_TLS_CERT_FILE": str(tmp_path / "absent.pem"), "SYSLOG_TLS_KEY_FILE": str(pki.key_file)}
    with pytest.raises(SettingsError, match="SYSLOG_TLS_CERT_FILE .*absent.pem: cannot be read"):
        load_syslog_tls(load_settings({**syslog_on, **own}))


async def test_the_watch_reloads_every_context_on_request_and_files_changed_before_it_began(
    pki: Pki, tmp_path: Path
) -> None:
    listeners = listeners_tls(pki.env())
    (tmp_path / "syslog").mkdir()
    syslog = make_pki(tmp_path / "syslog")  # syslog's own certificate, of its own CA
    syslog_tls = load_syslog_tls(load_settings({
        "SYSLOG_TLS_PORT": "6514",
        "SYSLOG_TLS_CERT_FILE": str(syslog.cert_file), "SYSLOG_TLS_KEY_FILE": str(syslog.key_file),
    }))
    assert syslog_tls is not None
    early = pki.issue_server()  # before the watch began: loaded as it begins
    requests, received = trio.open_memory_channel[None](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_tls, [listeners, syslog_tls], received, 0)
        assert (listeners.pair.serial, listeners.generation, syslog_tls.generation) == (early, 1, 0)
        newer, own = pki.issue_server(), syslog.issue_server()
        requests.send_nowait(None)  # one SIGHUP
        with trio.fail_after(5):
            while (listeners.pair.serial, syslog_tls.pair.serial) != (newer, own):
                await trio.sleep(0.02)
        assert await served_serial(syslog_tls, syslog.client_context()) == own
        nursery.cancel_scope.cancel()
