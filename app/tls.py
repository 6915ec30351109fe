"""TLS of the HTTP listeners and of OTLP/gRPC: one server context, its certificate changed without a restart.

``TLS_CERT_FILE`` and ``TLS_KEY_FILE`` turn it on; ``TLS_CLIENT_CA_FILE`` makes it mutual: a client
then needs a certificate that CA signed, and the certificate's subject (``CN=...``) or one of its
subject alternative names (``DNS:...``, ``IP:...``, ``URI:...``, ``email:...``) can stand for an
API key (:mod:`app.auth`). TLS 1.2 is the least version; the ciphers are the standard library's.

:class:`ServerTLS` owns the context. :meth:`ServerTLS.reload` loads the files again into the same
context, so new handshakes get the new certificate while open connections keep theirs; it runs on
SIGHUP and when a file's modification time or size changes (:meth:`ServerTLS.watch`). A reload
that fails (a half-written file, a key of another certificate) keeps the certificate in use.
"""

from __future__ import annotations

import logging
import os
import ssl
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


def _load_pair(settings: Settings, context: ssl.SSLContext) -> KeyPair:
    """Check the certificate and key files and load them into ``context``; a SettingsError names the culprit."""
    cert_path, key_path = settings.tls_cert_file, settings.tls_key_file
    chain = _read("TLS_CERT_FILE", cert_path)
    leaf = _certificates("TLS_CERT_FILE", cert_path, chain)[0]
    key = _read("TLS_KEY_FILE", key_path)
    try:
        load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise SettingsError(f"TLS_KEY_FILE {key_path}: not a PEM private key (or one with a passphrase)") from None
    # Both checked in a context of their own first: a key of another certificate must not reach the one in use.
    for target in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), context):
        try:
            target.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(
                f"TLS_KEY_FILE {key_path} is not the key of TLS_CERT_FILE {cert_path} ({error})"
            ) from None
    return KeyPair(chain, key, leaf.serial_number)


class ServerTLS:
    """The server side of TLS: the context every TLS listener serves, and what gRPC needs of it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the standard library's default ciphers
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(list(ALPN))
        self.client_ca: bytes | None = None
        if settings.tls_client_ca_file:
            self.client_ca = _read("TLS_CLIENT_CA_FILE", settings.tls_client_ca_file)
            _certificates("TLS_CLIENT_CA_FILE", settings.tls_client_ca_file, self.client_ca)
            # Only this CA: never the system's trust store, whose every certificate would be a client.
            try:
                self.context.load_verify_locations(cadata=self.client_ca.decode("ascii", "replace"))
            except ssl.SSLError as error:
                raise SettingsError(f"TLS_CLIENT_CA_FILE {settings.tls_client_ca_file}: {error}") from None
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.pair = _load_pair(settings, self.context)
        self._stamps = self._file_stamps()
        self.generation = 0  # one more at every reload: gRPC's certificate fetcher compares it
        log.info("TLS certificate %s loaded (serial %x)", settings.tls_cert_file, self.pair.serial)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def _file_stamps(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self._settings.tls_cert_file, self._settings.tls_key_file):
            try:
                status = os.stat(path)
                stamps.append((status.st_mtime_ns, status.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    def reload(self) -> bool:
        """Load the certificate and key again; whether the new ones are now served."""
        stamps = self._file_stamps()
        try:
            pair = _load_pair(self._settings, self.context)
        except SettingsError as error:
            log.error("TLS certificate not reloaded, the one loaded before stays: %s", error)
            return False
        self.pair, self._stamps = pair, stamps
        self.generation += 1
        log.info("TLS certificate %s reloaded (serial %x)", self._settings.tls_cert_file, pair.serial)
        return True

    def changed(self) -> bool:
        return self._file_stamps() != self._stamps

    async def watch(
        self, requests: trio.MemoryReceiveChannel[None], interval: float,
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reload on each request (SIGHUP) and, every ``interval`` seconds (0: never), when a file changed."""
        task_status.started()
        while True:
            with trio.move_on_after(interval if interval > 0 else float("inf")):
                try:
                    await requests.receive()
                except trio.EndOfChannel:
                    return
                self.reload()
                continue
            if self.changed():
                self.reload()


def load_tls(settings: Settings) -> ServerTLS | None:
    """The listeners' TLS, or None while no certificate is set; a SettingsError for a file that does not do."""
    return ServerTLS(settings) if settings.tls_cert_file else None


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
