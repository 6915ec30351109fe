"""Certificates for the TLS tests, made by trustme: a server CA and certificate, a client CA and its clients."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509


@dataclass
class Pki:
    directory: Path
    ca: trustme.CA  # signs the gateway's certificate
    client_ca: trustme.CA  # signs the clients' (TLS_CLIENT_CA_FILE)
    other_ca: trustme.CA  # signs certificates the gateway must refuse

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_ca_file(self) -> Path:
        return self.directory / "client-ca.pem"

    def env(self, *, mutual: bool = False) -> dict[str, str]:
        """The gateway's TLS settings (syslog over TLS left off: it would take the same files)."""
        env = {"TLS_CERT_FILE": str(self.cert_file), "TLS_KEY_FILE": str(self.key_file), "SYSLOG_TLS_PORT": "0"}
        if mutual:
            env["TLS_CLIENT_CA_FILE"] = str(self.client_ca_file)
        return env

    def issue_server(self) -> int:
        """A new certificate for 127.0.0.1 and localhost, swapped in for the old one; its serial."""
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        for path, blobs in ((self.cert_file, issued.cert_chain_pems), (self.key_file, [issued.private_key_pem])):
            fresh = path.with_suffix(".new")
            fresh.write_bytes(b"".join(blob.bytes() for blob in blobs))
            os.replace(fresh, path)  # as a rotation should: never a half-written file
        return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number

    def client(self, name: str, *alternative_names: str, ca: trustme.CA | None = None) -> Path:
        """A client's certificate and key in one PEM file, its subject ``CN=<name>``."""
        issued = (ca or self.client_ca).issue_cert(*(alternative_names or (f"{name}.clients.test",)), common_name=name)
        path = self.directory / f"client-{name}-{id(ca)}.pem"
        issued.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def client_context(self, certificate: Path | None = None) -> ssl.SSLContext:
        """What a client trusts (this CA) and presents (``certificate``, if any)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if certificate is not None:
            context.load_cert_chain(str(certificate))
        return context


def make_pki(directory: Path) -> Pki:
    pki = Pki(directory, trustme.CA(), trustme.CA(), trustme.CA())
    pki.ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.client_ca.cert_pem.write_to_path(str(pki.client_ca_file))
    pki.issue_server()
    return pki


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number
