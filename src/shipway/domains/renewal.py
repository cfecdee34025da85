"""The ACME task: issue and renew due certificates (HTTP-01 answered by the router), with
classified failures and backoff; never takes a working certificate away.

It runs in a thread of its own in the relay (an order takes seconds), every
``SHIPWAY_CERTIFICATE_CHECK_SECONDS``; a certificate issued here is installed in the
router at once (and by the host-routing task after any restart).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session

from shipway.certificates.issuer import (
    CertificateIssueError,
    issue_certificate,
    new_account_key,
)
from shipway.config import Settings, get_settings
from shipway.domains.models import AcmeAccount, Certificate
from shipway.domains.tls import due, record_failure, record_issued
from shipway.ids import utcnow
from shipway.jobs.periodic import periodic
from shipway.router.hosts import HostRouting

log = logging.getLogger(__name__)


@dataclass
class RenewalReport:
    """Hostnames certified and failed (with their reasons) in one pass."""

    issued: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def account_key(session: Session, *, directory_url: str) -> str:
    """This installation's ACME account key at ``directory_url`` (made on first use)."""
    account = session.get(AcmeAccount, directory_url)
    if account is None:
        account = AcmeAccount(directory_url=directory_url, key_pem=new_account_key())
        session.add(account)
        session.flush()
    return account.key_pem


def renew_due(*, hosts: HostRouting, settings: Settings, limit: int = 10) -> RenewalReport:
    """Issue every due certificate (one transaction each; the order itself outside any)."""
    from shipway.db import transaction

    report = RenewalReport()
    with transaction() as session:
        hostnames = [row.hostname for row in due(session, now=utcnow(), limit=limit)]
        key = account_key(session, directory_url=settings.acme_directory_url)
    for hostname in hostnames:
        try:
            issued = issue_certificate(
                directory_url=settings.acme_directory_url,
                account_key_pem=key,
                domains=[hostname],
                board=hosts,
                email=settings.acme_email or None,
                ca_bundle=settings.acme_ca_bundle or None,
            )
        except CertificateIssueError as error:
            _failed(hostname, error)
            report.failed[hostname] = error.reason
            continue
        with transaction() as session:
            row = session.get(Certificate, hostname)
            if row is None or row.source != "acme":
                continue  # removed, or replaced by an upload, meanwhile
            record_issued(
                row,
                fullchain_pem=issued.fullchain_pem,
                key_pem=issued.key_pem,
                renew_before=timedelta(days=settings.certificate_renew_before_days),
                now=utcnow(),
            )
        report.issued.append(hostname)
        log.info("certificate for %s issued, valid until %s", hostname, issued.not_after)
    return report


def _failed(hostname: str, error: CertificateIssueError) -> None:
    from shipway.db import transaction

    log.warning("certificate for %s not issued: %s (%s)", hostname, error.reason, error.title)
    retry = timedelta(seconds=error.retry_after_seconds) if error.retry_after_seconds else None
    with transaction() as session:
        row = session.get(Certificate, hostname)
        if row is not None:
            attempts_left = error.retryable or row.status == "issued"
            record_failure(
                row,
                reason=error.reason,
                diagnostics=error.diagnostics,
                now=utcnow(),
                retry_after=retry if attempts_left else timedelta(days=1),
            )


@periodic(
    "certificates",
    interval=lambda settings: (
        settings.certificate_check_seconds
        if settings.acme_directory_url and settings.router_http_port
        else 0
    ),
)
def certificates_pass() -> RenewalReport | None:
    """One pass: issue what is due, then install it in the router."""
    from shipway.domains.routing import sync_hosts
    from shipway.router.current import router_config

    settings = get_settings()
    router = router_config()
    hosts: HostRouting | None = getattr(router, "hosts", None)
    if hosts is None or not hosts.enabled or not router.is_running():
        return None
    report = renew_due(hosts=hosts, settings=settings)
    if report.issued:
        sync_hosts()
    return report
