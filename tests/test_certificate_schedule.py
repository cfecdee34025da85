"""When certificates are renewed and retried (domains/tls.py), on rows in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shipway.domains.models import Certificate
from shipway.domains.tls import LONGEST_RETRY, record_failure, record_issued
from tests.support.certs import ThrowawayCA

DIAGNOSIS = {"title": "t", "description": "d", "action": "a"}


def pending() -> Certificate:
    return Certificate(
        hostname="a.example.com", workspace_id="w", source="acme", status="pending", attempts=0
    )


def test_renewal_is_due_the_window_before_expiry() -> None:
    row = pending()
    chain, key = ThrowawayCA().issue(["a.example.com"], valid_for=timedelta(days=90))
    now = datetime.now(UTC)
    record_issued(row, fullchain_pem=chain, key_pem=key, renew_before=timedelta(days=30), now=now)
    assert row.status == "issued" and row.not_after is not None
    assert row.next_attempt_at == row.not_after - timedelta(days=30)


def test_a_short_lived_certificate_renews_at_two_thirds_of_its_life() -> None:
    row = pending()
    chain, key = ThrowawayCA().issue(["a.example.com"], valid_for=timedelta(minutes=30))
    now = datetime.now(UTC)
    record_issued(row, fullchain_pem=chain, key_pem=key, renew_before=timedelta(days=30), now=now)
    assert row.not_after is not None and row.not_before is not None
    assert row.next_attempt_at == row.not_after - (row.not_after - row.not_before) / 3


def test_failures_back_off_exponentially_up_to_a_cap() -> None:
    row = pending()
    now = datetime.now(UTC)
    waits = []
    for _ in range(12):
        record_failure(row, reason="acme_unreachable", diagnostics=DIAGNOSIS, now=now)
        assert row.next_attempt_at is not None
        waits.append(row.next_attempt_at - now)
    assert waits[:3] == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    assert waits[-1] == LONGEST_RETRY and row.status == "failed"
    record_failure(
        row, reason="acme_rate_limited", diagnostics=DIAGNOSIS, now=now,
        retry_after=timedelta(hours=9),
    )  # fmt: skip
    assert row.next_attempt_at == now + timedelta(hours=9)


def test_a_failed_renewal_keeps_the_working_certificate() -> None:
    row = pending()
    chain, key = ThrowawayCA().issue(["a.example.com"])
    now = datetime.now(UTC)
    record_issued(row, fullchain_pem=chain, key_pem=key, renew_before=timedelta(days=30), now=now)
    record_failure(row, reason="acme_challenge_failed", diagnostics=DIAGNOSIS, now=now)
    assert row.status == "issued" and row.fullchain_pem == chain
    assert row.failure_reason == "acme_challenge_failed" and row.failure_diagnostics == DIAGNOSIS
    record_issued(row, fullchain_pem=chain, key_pem=key, renew_before=timedelta(days=30), now=now)
    assert row.failure_reason is None and row.attempts == 0
