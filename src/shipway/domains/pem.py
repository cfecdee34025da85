"""What a certificate says (pure): its names, issuer and validity; checks of an uploaded pair."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from shipway.errors import InvalidInput

MAX_PEM_BYTES = 64 * 1024


@dataclass(frozen=True)
class CertificateFacts:
    """The leaf certificate's names, issuer and validity window."""

    names: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime


def facts_of(fullchain_pem: str) -> CertificateFacts:
    """Names, issuer and validity of the first (leaf) certificate in a PEM chain."""
    return _facts(_chain(fullchain_pem)[0])


def _facts(leaf: x509.Certificate) -> CertificateFacts:
    try:
        names = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateFacts(
        names=tuple(name.lower() for name in names),
        issuer=str(issuer[0].value) if issuer else leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def covers(names: tuple[str, ...], hostname: str) -> bool:
    """Whether a certificate for ``names`` is valid for ``hostname`` (RFC 6125 wildcards)."""
    for name in names:
        if name == hostname:
            return True
        if name.startswith("*.") and hostname.partition(".")[2] == name[2:]:
            return True
    return False


def check_uploaded(
    *, fullchain_pem: str, key_pem: str, hostname: str, now: datetime
) -> CertificateFacts:
    """The facts of an uploaded certificate, or InvalidInput saying what is wrong with it."""
    if len(fullchain_pem) > MAX_PEM_BYTES or len(key_pem) > MAX_PEM_BYTES:
        raise _invalid(f"certificate and key are each at most {MAX_PEM_BYTES} bytes")
    leaf = _chain(fullchain_pem)[0]
    facts = _facts(leaf)
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise _invalid("the key is not an unencrypted PEM private key") from None
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise _invalid("the key does not belong to the certificate")
    if not covers(facts.names, hostname):
        names = ", ".join(facts.names) or "none"
        raise _invalid(f"the certificate is not valid for {hostname} (names: {names})")
    if facts.not_after <= now:
        raise _invalid(f"the certificate expired at {facts.not_after.isoformat()}")
    return facts


def _chain(fullchain_pem: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem.encode())
    except ValueError:
        raise _invalid("the certificate is not a PEM certificate chain") from None
    return chain


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="certificate_invalid", field="certificate")
