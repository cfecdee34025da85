"""Sending deliveries: claim what is due, POST it signed (short timeout), record, back off.

Runs in the relay's own ``webhooks`` lane (a thread of its own, see ``periodic``): the
rollouts never wait on it, and it never waits on them. Each pass claims up to
``4 * SHIPWAY_WEBHOOK_CONCURRENCY`` due deliveries (a conditional UPDATE moves their
``next_attempt_at`` past the request timeout, so another relay does not send them too,
and a relay that dies mid-request retries later), then sends them from a thread pool.
"""

from __future__ import annotations

import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shipway import __version__
from shipway.config import Settings, get_settings
from shipway.ids import utcnow
from shipway.jobs.periodic import periodic
from shipway.webhooks import signing
from shipway.webhooks.addresses import check_destination
from shipway.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shipway.webhooks.outbox import collect_events, collect_stuck_jobs

log = logging.getLogger(__name__)

MAX_DELAY_SECONDS = 3600.0
BODY_KEPT = 1024  # bytes of an answer kept in the attempt log
STUCK_SCAN_SECONDS = 15.0
_last_stuck_scan = 0.0


def retry_delay(attempt: int, *, base: float, jitter: float = 1.0) -> float:
    """Seconds before the attempt after failed attempt ``attempt`` (1, 2, …): doubling, ≤ 1 h."""
    return min(base * 2 ** max(0, attempt - 1), MAX_DELAY_SECONDS) * jitter


@dataclass(frozen=True)
class Claimed:
    """One delivery taken for sending: what the request needs (read in the claim)."""

    delivery_id: str
    url: str
    secrets: tuple[str, ...]
    body: bytes
    attempt: int
    trigger: str


@dataclass
class Result:
    """What one request gave: a status and answer, or an error class and message."""

    status_code: int | None = None
    response_body: str = ""
    error: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class PassReport:
    """What one pass did."""

    enqueued: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: list[str] = field(default_factory=list)


def valid_secrets(endpoint: WebhookEndpoint, now: datetime) -> tuple[str, ...]:
    """The current secret, and the previous one while its overlap lasts."""
    if (
        endpoint.previous_secret
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > now
    ):
        return (endpoint.secret, endpoint.previous_secret)
    return (endpoint.secret,)


def body_of(delivery: WebhookDelivery) -> bytes:
    """The request body: the payload as compact JSON (what the signature covers)."""
    return json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()


def due(session: Session, *, now: datetime, limit: int) -> list[str]:
    """Ids of pending deliveries due now whose endpoint is enabled, oldest due first."""
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.state == "pending",
                WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.enabled.is_(True),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )


def claim(
    session: Session, delivery_id: str, *, now: datetime, settings: Settings
) -> Claimed | None:
    """Take one due delivery for one attempt (None if another relay took it, or it expired)."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.state != "pending" or delivery.next_attempt_at is None:
        return None
    if delivery.deadline_at <= now:
        _give_up(delivery, now=now, error="deadline passed before the next attempt")
        return None
    lease = now + timedelta(seconds=settings.webhook_timeout_seconds * 2 + 30)
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at == delivery.next_attempt_at,
        )
        .values(next_attempt_at=lease, attempts=WebhookDelivery.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    assert endpoint is not None
    return Claimed(
        delivery_id=delivery.id,
        url=endpoint.url,
        secrets=valid_secrets(endpoint, now),
        body=body_of(delivery),
        attempt=delivery.attempts + 1,
        trigger=delivery.trigger,
    )


def send(claimed: Claimed, *, settings: Settings) -> Result:
    """POST one signed delivery; never raises (errors are a Result)."""
    started = time.monotonic()
    result = Result()
    try:
        check_destination(claimed.url, allow_private=settings.webhook_allow_private)
        headers = {
            "content-type": "application/json",
            "user-agent": f"shipway-webhooks/{__version__}",
            **signing.headers(
                claimed.secrets,
                msg_id=claimed.delivery_id,
                timestamp=int(time.time()),
                body=claimed.body,
            ),
        }
        timeout = httpx.Timeout(settings.webhook_timeout_seconds)
        client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
        with (
            client,
            client.stream("POST", claimed.url, content=claimed.body, headers=headers) as answer,
        ):
            result.status_code = answer.status_code
            kept = b""
            for chunk in answer.iter_bytes():
                kept += chunk
                if len(kept) >= BODY_KEPT:
                    break
            result.response_body = kept[:BODY_KEPT].decode("utf-8", "replace")
    except Exception as error:  # every failure is an outcome of the attempt
        result.error = f"{type(error).__name__}: {error}"[:200]
    result.duration_ms = round((time.monotonic() - started) * 1000, 1)
    return result


def _give_up(delivery: WebhookDelivery, *, now: datetime, error: str | None = None) -> None:
    delivery.state = "failed"
    delivery.next_attempt_at = None
    delivery.updated_at = now
    if error:
        delivery.last_error = error


def record(
    session: Session, claimed: Claimed, result: Result, *, now: datetime, settings: Settings
) -> str:
    """Log the attempt and move the delivery on: succeeded, retry later, or failed
    (``gone`` if its endpoint was deleted meanwhile)."""
    delivery = session.get(WebhookDelivery, claimed.delivery_id, populate_existing=True)
    if delivery is None:
        return "gone"
    session.add(
        WebhookAttempt(
            delivery_id=claimed.delivery_id,
            outcome="succeeded" if result.ok else "failed",
            status_code=result.status_code,
            error=result.error,
            response_body=result.response_body,
            duration_ms=result.duration_ms,
            trigger=claimed.trigger,
            started_at=now - timedelta(milliseconds=result.duration_ms),
        )
    )
    delivery.last_status_code = result.status_code
    delivery.last_error = result.error
    delivery.updated_at = now
    if result.ok:
        delivery.state, delivery.next_attempt_at, delivery.delivered_at = "succeeded", None, now
        return "succeeded"
    delay = retry_delay(
        delivery.attempts, base=settings.webhook_backoff_seconds, jitter=random.uniform(0.9, 1.1)
    )
    retry_at = now + timedelta(seconds=delay)
    if delivery.attempts >= settings.webhook_max_attempts or retry_at > delivery.deadline_at:
        _give_up(delivery, now=now)
        return "failed"
    delivery.next_attempt_at = retry_at
    return "retrying"


def _deliver(claimed: Claimed, settings: Settings) -> str:
    from shipway.db import transaction

    result = send(claimed, settings=settings)
    with transaction() as session:
        return record(session, claimed, result, now=utcnow(), settings=settings)


def deliver_due(*, settings: Settings) -> PassReport:
    """Claim and send what is due now (each request in a pool thread, its own transaction)."""
    from shipway.db import transaction

    report = PassReport()
    with transaction() as session:
        ids = due(session, now=utcnow(), limit=settings.webhook_concurrency * 4)
    claimed: list[Claimed] = []
    for delivery_id in ids:
        with transaction() as session:
            taken = claim(session, delivery_id, now=utcnow(), settings=settings)
        if taken is not None:
            claimed.append(taken)
    if not claimed:
        return report
    with ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook") as pool:
        outcomes = list(pool.map(lambda c: _deliver(c, settings), claimed))
    report.sent = len(outcomes)
    report.succeeded = outcomes.count("succeeded")
    report.failed = [c.delivery_id for c, o in zip(claimed, outcomes, strict=True) if o == "failed"]
    return report


def collect(*, settings: Settings) -> int:
    """The outbox part of a pass: new events, and (every 15 s) stuck jobs, to deliveries."""
    global _last_stuck_scan
    from shipway.db import transaction

    with transaction() as session:
        made = collect_events(session, now=utcnow(), settings=settings)
    if time.monotonic() - _last_stuck_scan >= STUCK_SCAN_SECONDS:
        _last_stuck_scan = time.monotonic()
        with transaction() as session:
            made += collect_stuck_jobs(session, now=utcnow(), settings=settings)
    return made


@periodic("webhooks", interval=lambda settings: settings.webhook_interval_seconds)
def webhooks_pass() -> PassReport:
    """One pass of the webhook lane: outbox, then sends (logged when it did anything)."""
    settings = get_settings()
    enqueued = collect(settings=settings)
    report = deliver_due(settings=settings)
    report.enqueued = enqueued
    if report.enqueued or report.sent:
        log.info("webhooks: %s", report)
    return report
