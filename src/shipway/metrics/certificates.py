"""Certificate gauges: when each served certificate expires, and what is failing to issue."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shipway.domains.models import Certificate


@dataclass(frozen=True)
class CertificateSnapshot:
    expiry: dict[tuple[str, str], float]  # (hostname, source) → not_after, epoch seconds
    statuses: dict[str, int]
    failures: dict[str, int]  # failure_reason → certificates failing for it now


def read_certificates(session: Session) -> CertificateSnapshot:
    """Expiry of issued certificates; counts by status and by current failure reason."""
    expiry = {
        (row.hostname, row.source): row.not_after.timestamp()
        for row in session.execute(
            select(Certificate.hostname, Certificate.source, Certificate.not_after).where(
                Certificate.status == "issued", Certificate.not_after.isnot(None)
            )
        )
    }
    statuses = {
        row.status: int(row.n)
        for row in session.execute(
            select(Certificate.status, func.count().label("n")).group_by(Certificate.status)
        )
    }
    failures = {
        row.failure_reason: int(row.n)
        for row in session.execute(
            select(Certificate.failure_reason, func.count().label("n"))
            .where(Certificate.failure_reason.isnot(None))
            .group_by(Certificate.failure_reason)
        )
    }
    return CertificateSnapshot(expiry=expiry, statuses=statuses, failures=failures)


def certificate_metrics(snapshot: CertificateSnapshot) -> Iterable[Metric]:
    expiry = GaugeMetricFamily(
        "shipway_certificate_expiry_timestamp_seconds",
        "When each served certificate expires (Unix time), by hostname and source.",
        labels=["hostname", "source"],
    )
    for (hostname, source), when in sorted(snapshot.expiry.items()):
        expiry.add_metric([hostname, source], when)
    yield expiry
    statuses = GaugeMetricFamily(
        "shipway_certificates", "Certificates by status.", labels=["status"]
    )
    for status in sorted({"pending", "issued", "failed"} | set(snapshot.statuses)):
        statuses.add_metric([status], snapshot.statuses.get(status, 0))
    yield statuses
    failures = GaugeMetricFamily(
        "shipway_certificate_failures",
        "Certificates whose last issuance or renewal failed, by classified reason.",
        labels=["reason"],
    )
    for reason, n in sorted(snapshot.failures.items()):
        failures.add_metric([reason], n)
    yield failures
