"""Sending deliveries: claim what is due, POST it signed (short timeout), record, back off.

Runs in the relay's own ``webhooks`` lane (a thread of its own, see ``periodic``): the
rollouts never wait on it, and it never waits on them. Each pass claims as many due
deliveries as there are free sending slots (``SHIPWAY_WEBHOOK_CONCURRENCY``; a conditional
UPDATE moves their ``next_attempt_at`` past the request timeout, so another relay does
not send them too, and a relay that dies mid-request retries later) and starts each
request in a thread of its own without waiting for it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Engine, select, update
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
PER_ENDPOINT = 2  # requests under way to one endpoint at most
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
    endpoint_id: str
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
    started: int = 0


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


def due(session: Session, *, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(delivery id, endpoint id) of pending deliveries due now whose endpoint is enabled,
    oldest due first."""
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.endpoint_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookEndpoint.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in rows]


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
        endpoint_id=endpoint.id,
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


class Senders:
    """The requests under way: each in a daemon thread of its own, at most ``concurrency``.

    A pass never waits for them: a hanging endpoint holds a slot for at most the request
    timeout while the lane goes on collecting events and sending to other endpoints; one
    endpoint has at most ``PER_ENDPOINT`` requests under way, so a slow one cannot take
    every slot.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.by_endpoint: dict[str, int] = {}

    def free(self, concurrency: int) -> int:
        with self.lock:
            return max(0, concurrency - self.in_flight)

    def busy(self, endpoint_id: str) -> bool:
        with self.lock:
            return self.by_endpoint.get(endpoint_id, 0) >= PER_ENDPOINT

    def start(self, claimed: Claimed, *, settings: Settings, engine: Engine) -> None:
        with self.lock:
            self.in_flight += 1
            self.by_endpoint[claimed.endpoint_id] = self.by_endpoint.get(claimed.endpoint_id, 0) + 1
        thread = threading.Thread(
            target=self._run, args=(claimed, settings, engine), name="webhook", daemon=True
        )
        thread.start()

    def _run(self, claimed: Claimed, settings: Settings, engine: Engine) -> None:
        from shipway.db import transaction

        try:
            result = send(claimed, settings=settings)
            with transaction(engine) as session:
                outcome = record(session, claimed, result, now=utcnow(), settings=settings)
            if outcome == "failed":
                log.warning("webhook delivery %s given up: %s", claimed.delivery_id, result)
        except Exception:
            log.exception("webhook delivery %s: recording the attempt failed", claimed.delivery_id)
        finally:
            with self.lock:
                self.in_flight -= 1
                left = self.by_endpoint.pop(claimed.endpoint_id, 1) - 1
                if left:
                    self.by_endpoint[claimed.endpoint_id] = left


SENDERS = Senders()


def deliver_due(*, settings: Settings) -> PassReport:
    """Claim what is due now (as many as there are free slots) and start sending it."""
    from shipway.db import get_engine, transaction

    report = PassReport()
    free = SENDERS.free(settings.webhook_concurrency)
    if not free:
        return report
    engine = get_engine()
    with transaction(engine) as session:
        found = due(session, now=utcnow(), limit=free * 4)
    for delivery_id, endpoint_id in found:
        if report.started >= free or SENDERS.busy(endpoint_id):
            continue
        with transaction(engine) as session:
            taken = claim(session, delivery_id, now=utcnow(), settings=settings)
        if taken is not None:
            SENDERS.start(taken, settings=settings, engine=engine)
            report.started += 1
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
    if report.enqueued or report.started:
        log.info("webhooks: %s", report)
    return report
