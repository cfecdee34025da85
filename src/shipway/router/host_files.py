"""The files behind host-based routing: HAProxy maps, the crt-list, certificate PEMs.

HAProxy reads them when a worker starts (start or reload); between reloads the runtime
API changes its in-memory copies, and these files are rewritten with every change so
that the next worker starts with the same table.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shipway.router.state import HostTable, write_atomic


@dataclass(frozen=True)
class HostFiles:
    """Where a router folder keeps its host maps and certificates."""

    directory: Path

    @property
    def hosts_map(self) -> Path:
        return self.directory / "hosts.map"

    @property
    def redirect_map(self) -> Path:
        return self.directory / "redirect.map"

    @property
    def hsts_map(self) -> Path:
        return self.directory / "hsts.map"

    @property
    def acme_map(self) -> Path:
        return self.directory / "acme.map"

    @property
    def crt_list(self) -> Path:
        return self.directory / "certs.list"

    @property
    def certs(self) -> Path:
        return self.directory / "certs"

    @property
    def default_cert(self) -> Path:
        """Served to clients whose SNI matches no certificate (self-signed)."""
        return self.certs / "default.pem"

    def cert_path(self, hostname: str) -> Path:
        return self.certs / f"{hostname}.pem"

    def write(self, table: HostTable, backend: Callable[[str], str]) -> None:
        """Every file of ``table`` (the default certificate made once); ``backend`` names the
        HAProxy backend of a route key."""
        self.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.default_cert.exists():
            write_atomic(self.default_cert, _self_signed_pem(), mode=0o600)
        self.write_hosts_map(table, backend)
        write_atomic(self.redirect_map, _map(dict.fromkeys(table.redirects, "1")))
        write_atomic(self.hsts_map, _map(dict.fromkeys(table.hsts, "1")))
        if not self.acme_map.exists():
            write_atomic(self.acme_map, "")
        lines = [str(self.default_cert)] + [str(self.cert_path(h)) for h in table.certificates]
        write_atomic(self.crt_list, "\n".join(lines) + "\n")

    def write_hosts_map(self, table: HostTable, backend: Callable[[str], str]) -> None:
        """``hosts.map``: hostname → the backend of its route."""
        write_atomic(self.hosts_map, _map({h: backend(k) for h, k in table.routes.items()}))


def fingerprint(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


def _map(entries: dict[str, str]) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries.items())


def _self_signed_pem() -> str:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shipway default certificate")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_text = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_text
