"""TLS of the HTTP listeners, of OTLP/gRPC and of syslog: server contexts whose files change without a restart.

``TLS_CERT_FILE`` and ``TLS_KEY_FILE`` turn it on; ``TLS_CLIENT_CA_FILE`` makes it mutual: a client
then needs a certificate that CA signed, and the certificate's subject (``CN=...``) or one of its
subject alternative names (``DNS:...``, ``IP:...``, ``URI:...``, ``email:...``) can stand for an
API key (:mod:`app.auth`). TLS 1.2 is the least version; the ciphers are the standard library's.
Syslog over TLS has a :class:`ServerTLS` of its own (:func:`load_syslog_tls`): its own files or the
listeners', never mutual, no ALPN.

:class:`ServerTLS` owns a context. :meth:`ServerTLS.reload` reads the certificate, the key and the
client CA again into a new context that takes the place of the old one: new handshakes get the new
certificate and trust the new CA bundle only, while open connections keep the context they were
made with. A new context has new session ticket keys, so a client the new bundle no longer trusts
cannot resume a session either. :func:`watch_tls` reloads on SIGHUP and when a file's modification time
or size changes. A reload that fails (a half-written file, a key of another certificate) keeps the
context in use.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from app.config import Settings, SettingsError

log = logging.getLogger(__name__)

ALPN = ("h2", "http/1.1")
_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_SAN_PREFIXES: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.UniformResourceIdentifier: "URI",
    x509.RFC822Name: "email",
}


@dataclass(frozen=True, slots=True)
class KeyPair:
    """What was loaded last: the PEM bytes (gRPC takes them as bytes) and the certificate's serial."""

    certificate_chain: bytes
    private_key: bytes
    serial: int


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise SettingsError(f"{setting} {path}: cannot be read ({error.strerror or error})") from None


def _certificates(setting: str, path: str, data: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise SettingsError(f"{setting} {path}: no PEM certificate in it")
    return certificates


def _load_pair(prefix: str, cert_path: str, key_path: str, context: ssl.SSLContext) -> KeyPair:
    """Check the certificate and key files and load them into ``context``; a SettingsError names the culprit."""
    cert_setting, key_setting = f"{prefix}_CERT_FILE", f"{prefix}_KEY_FILE"
    chain = _read(cert_setting, cert_path)
    leaf = _certificates(cert_setting, cert_path, chain)[0]
    key = _read(key_setting, key_path)
    try:
        load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise SettingsError(f"{key_setting} {key_path}: not a PEM private key (or one with a passphrase)") from None
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as error:
        message = f"{key_setting} {key_path} is not the key of {cert_setting} {cert_path} ({error})"
        raise SettingsError(message) from None
    return KeyPair(chain, key, leaf.serial_number)


class ServerTLS:
    """The server side of TLS: the context a TLS listener serves, and what gRPC needs of it.

    ``prefix`` names the settings in errors (``TLS`` for ``TLS_CERT_FILE``...); ``client_ca_file``
    makes it mutual. Read :attr:`context` for each connection: a reload replaces it.
    """

    def __init__(
        self, cert_file: str, key_file: str, client_ca_file: str = "",
        *, prefix: str = "TLS", alpn: Sequence[str] = ALPN, name: str = "",
    ) -> None:
        self._cert_file, self._key_file, self._client_ca_file = cert_file, key_file, client_ca_file
        self._prefix = prefix
        self._alpn = list(alpn)
        self._what = f"{name} TLS certificate" if name else "TLS certificate"
        self._stamps = self._file_stamps()
        self.context, self.pair, self.client_ca = self._load()
        self.generation = 0  # one more at every reload: gRPC's certificate fetcher compares it
        log.info("%s %s loaded (serial %x%s)", self._what, cert_file, self.pair.serial, self._trusted())

    @property
    def mutual(self) -> bool:
        return bool(self._client_ca_file)

    def _load(self) -> tuple[ssl.SSLContext, KeyPair, bytes | None]:
        """A new context of the files as they are now; a SettingsError names the file that does not do."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the standard library's default ciphers
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self._alpn:
            context.set_alpn_protocols(self._alpn)
        client_ca = None
        if self._client_ca_file:
            setting, path = f"{self._prefix}_CLIENT_CA_FILE", self._client_ca_file
            client_ca = _read(setting, path)
            _certificates(setting, path, client_ca)
            # Only this CA bundle: never the system's trust store, whose every certificate would be a client.
            try:
                context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
            except ssl.SSLError as error:
                raise SettingsError(f"{setting} {path}: {error}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context, _load_pair(self._prefix, self._cert_file, self._key_file, context), client_ca

    def _trusted(self) -> str:
        if self.client_ca is None:
            return ""
        count = len(x509.load_pem_x509_certificates(self.client_ca))
        return f"; client CA {self._client_ca_file}: {count} certificate(s)"

    def _file_stamps(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self._cert_file, self._key_file, *([self._client_ca_file] if self._client_ca_file else [])):
            try:
                status = os.stat(path)
                stamps.append((status.st_mtime_ns, status.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    def reload(self) -> bool:
        """Read the certificate, key and client CA again; whether the new ones now serve new connections."""
        stamps = self._file_stamps()  # before the reads: a change while they run is seen at the next look
        try:
            self.context, self.pair, self.client_ca = self._load()
        except SettingsError as error:
            log.error("%s not reloaded, the one loaded before stays: %s", self._what, error)
            return False
        self._stamps = stamps
        self.generation += 1
        log.info("%s %s reloaded (serial %x%s)", self._what, self._cert_file, self.pair.serial, self._trusted())
        return True

    def changed(self) -> bool:
        return self._file_stamps() != self._stamps


async def watch_tls(
    servers: Sequence[ServerTLS], requests: trio.MemoryReceiveChannel[None], interval: float,
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload every one of ``servers`` on each request (SIGHUP) and, every ``interval`` seconds (0:
    never), those whose files changed. Files that changed before it began (while the process was
    starting) are loaded at once."""
    task_status.started()
    for server in servers:
        if server.changed():
            server.reload()
    while True:
        with trio.move_on_after(interval if interval > 0 else float("inf")):
            try:
                await requests.receive()
            except trio.EndOfChannel:
                return
            for server in servers:
                server.reload()
            continue
        for server in servers:
            if server.changed():
                server.reload()


def load_tls(settings: Settings) -> ServerTLS | None:
    """The listeners' TLS, or None while no certificate is set; a SettingsError for a file that does not do."""
    if not settings.tls_cert_file:
        return None
    return ServerTLS(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def load_syslog_tls(settings: Settings) -> ServerTLS | None:
    """Syslog over TLS's (RFC 5425), or None while it is off or not hosted (the application role hosts it).

    Its own files, else the listeners' (read apart, into a context of its own): syslog senders
    present no client certificate and speak no ALPN, so neither is asked of them.
    """
    if not (settings.syslog_tls_port and settings.syslog_tls_cert_file and "application" in settings.role_set()):
        return None
    files = (settings.syslog_tls_cert_file, settings.syslog_tls_key_file)
    shared = files == (settings.tls_cert_file, settings.tls_key_file)
    return ServerTLS(
        settings.syslog_tls_cert_file, settings.syslog_tls_key_file,
        prefix="TLS" if shared else "SYSLOG_TLS", alpn=(), name="syslog",
    )


def identities(certificate: x509.Certificate) -> frozenset[str]:
    """What a client certificate can be known by: ``CN=<common name>`` and its alternative names."""
    names = {f"CN={attribute.value!s}" for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(names)
    for name in alternatives:
        prefix = _SAN_PREFIXES.get(type(name))
        if prefix is not None:
            names.add(f"{prefix}:{name.value!s}")
    return frozenset(names)


def pem_identities(pem: bytes) -> frozenset[str]:
    """The identities of a verified peer certificate in PEM (what gRPC's auth context holds)."""
    return identities(x509.load_pem_x509_certificate(pem))


class Handshaken(Protocol):
    """A connection whose TLS handshake is done (an ``ssl.SSLObject``, a ``trio.SSLStream``)."""

    def getpeercert(self, binary_form: bool) -> Any: ...

    def version(self) -> str | None: ...


def asgi_extension(ssl_object: Handshaken) -> dict[str, Any]:
    """The ASGI TLS extension (``scope["extensions"]["tls"]``) of a connection whose handshake is done.

    ``client_cert_identities`` is the gateway's own key: what :func:`identities` found in the client
    certificate, worked out once per connection rather than per request.
    """
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der) if der else None
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": certificate.subject.rfc4514_string() if certificate else None,
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "client_cert_identities": identities(certificate) if certificate else frozenset(),
    }
