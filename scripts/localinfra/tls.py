"""The CA and broker certificate behind ``KAFKA_SECURE=1``'s SSL and SASL_SSL listeners."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .process import which
from .settings import Settings


def ensure_tls(s: Settings) -> Path:
    """A CA and a broker certificate (SAN 127.0.0.1), made once with openssl; clients trust ``ca.pem``."""
    tls = s.tls_dir
    if (tls / "broker-keystore.pem").is_file():
        return tls
    tls.mkdir(parents=True, exist_ok=True)
    openssl = which("OPENSSL", "openssl", "apt-get install openssl")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "3650", "-subj", "/CN=kafka-log-gateway test CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "broker.pem", "-days", "3650", "-extfile", "san.ext"],
    ]
    (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for step in steps:
        subprocess.run(step, cwd=tls, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = subprocess.run(
        [openssl, "pkcs8", "-topk8", "-nocrypt", "-in", "broker.key"], cwd=tls, check=True, capture_output=True, text=True
    ).stdout
    (tls / "broker-keystore.pem").write_text(key + (tls / "broker.pem").read_text())
    return tls
