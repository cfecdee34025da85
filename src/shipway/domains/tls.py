"""Certificates of hostnames: asked for when a domain is added, uploaded by owners, issued
and renewed by the ACME task (``domains.renewal``), with backoff after a failure.

A failed issuance or renewal never takes a working certificate away: the row keeps
``status`` ``issued`` and its chain, and only records the failure and the next attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shipway.catalog.models import Environment
from shipway.domains.models import Certificate, Domain
from shipway.domains.pem import CertificateFacts, check_uploaded, facts_of
from shipway.ids import utcnow

PENDING, ISSUED, FAILED = "pending", "issued", "failed"
ACME, UPLOADED = "acme", "uploaded"
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=6)


def request_certificate(
    session: Session, *, domain: Domain, now: datetime | None = None
) -> Certificate:
    """The hostname's certificate row; a new one is pending, due at once."""
    existing = session.get(Certificate, domain.hostname)
    if existing is not None:
        return existing
    row = Certificate(
        hostname=domain.hostname,
        workspace_id=domain.workspace_id,
        source=ACME,
        status=PENDING,
        attempts=0,
        next_attempt_at=now or utcnow(),
        updated_at=now or utcnow(),
    )
    session.add(row)
    return row


def upload_certificate(
    session: Session,
    *,
    domain: Domain,
    fullchain_pem: str,
    key_pem: str,
    now: datetime | None = None,
) -> Certificate:
    """Use the owner's certificate and key (checked) instead of the CA's; no renewal then."""
    moment = now or utcnow()
    facts = check_uploaded(
        fullchain_pem=fullchain_pem, key_pem=key_pem, hostname=domain.hostname, now=moment
    )
    row = session.get(Certificate, domain.hostname) or request_certificate(
        session, domain=domain, now=moment
    )
    _store(row, facts, fullchain_pem=fullchain_pem, key_pem=key_pem, source=UPLOADED)
    row.next_attempt_at = None
    row.updated_at = moment
    return row


def drop_upload(
    session: Session, *, domain: Domain, acme: bool, now: datetime | None = None
) -> Certificate | None:
    """Forget an uploaded certificate: with ``acme`` the CA issues one at once, else the
    hostname is plain HTTP again."""
    row = session.get(Certificate, domain.hostname)
    if not acme:
        if row is not None:
            session.delete(row)
        return None
    row = row or request_certificate(session, domain=domain, now=now)
    if row.source == UPLOADED:
        row.source, row.status, row.attempts = ACME, PENDING, 0
        row.fullchain_pem = row.key_pem = None
        row.next_attempt_at = now or utcnow()
    return row


def due(session: Session, *, now: datetime, limit: int = 20) -> Sequence[Certificate]:
    """Certificates to issue or renew now, the most overdue first."""
    return session.scalars(
        select(Certificate)
        .where(Certificate.source == ACME, Certificate.next_attempt_at <= now)
        .order_by(Certificate.next_attempt_at)
        .limit(limit)
    ).all()


def record_issued(
    row: Certificate,
    *,
    fullchain_pem: str,
    key_pem: str,
    renew_before: timedelta,
    now: datetime,
) -> None:
    """Store a new certificate; its renewal is due ``renew_before`` its expiry (or at two
    thirds of its life, for certificates shorter-lived than the window)."""
    facts = facts_of(fullchain_pem)
    _store(row, facts, fullchain_pem=fullchain_pem, key_pem=key_pem, source=ACME)
    life = facts.not_after - facts.not_before
    row.next_attempt_at = max(now, facts.not_after - min(renew_before, life / 3))
    row.updated_at = now


def record_failure(
    row: Certificate,
    *,
    reason: str,
    diagnostics: dict[str, str],
    now: datetime,
    retry_after: timedelta | None = None,
) -> None:
    """A failed attempt: classified, retried with exponential backoff; a working
    certificate stays ``issued`` (and in the router)."""
    row.attempts += 1
    row.failure_reason, row.failure_diagnostics = reason, diagnostics
    if row.status != ISSUED:
        row.status = FAILED
    backoff = min(FIRST_RETRY * 2 ** (row.attempts - 1), LONGEST_RETRY)
    row.next_attempt_at = now + max(backoff, retry_after or timedelta(0))
    row.updated_at = now


def _store(
    row: Certificate, facts: CertificateFacts, *, fullchain_pem: str, key_pem: str, source: str
) -> None:
    row.source, row.status = source, ISSUED
    row.fullchain_pem, row.key_pem = fullchain_pem, key_pem
    row.issuer, row.not_before, row.not_after = facts.issuer, facts.not_before, facts.not_after
    row.attempts, row.failure_reason, row.failure_diagnostics = 0, None, None


EXPIRING_WITHIN = timedelta(days=14)


def needing_attention(
    session: Session, *, workspace_id: str, now: datetime, limit: int = 50
) -> list[tuple[Certificate, Domain, str]]:
    """The workspace's certificates that failed their last attempt or expire within 14 days,
    with their domain and environment name, the soonest expiry first."""
    rows = session.execute(
        select(Certificate, Domain, Environment.name)
        .join(Domain, Domain.hostname == Certificate.hostname)
        .join(Environment, Environment.id == Domain.environment_id)
        .where(
            Certificate.workspace_id == workspace_id,
            or_(
                Certificate.failure_reason.isnot(None),
                Certificate.not_after < now + EXPIRING_WITHIN,
            ),
        )
        .order_by(Certificate.not_after, Certificate.hostname)
        .limit(limit)
    ).all()
    return [(certificate, domain, name) for certificate, domain, name in rows]
