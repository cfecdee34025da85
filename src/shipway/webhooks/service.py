"""Webhook use cases: endpoints (secret shown once, rotation), deliveries and redelivery.

Each function runs in the caller's transaction; errors are domain errors (no HTTP).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from shipway.config import Settings
from shipway.errors import InvalidInput, NotFound
from shipway.ids import new_id
from shipway.webhooks import signing
from shipway.webhooks.addresses import check_destination
from shipway.webhooks.catalog import SUBSCRIBABLE, envelope
from shipway.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shipway.webhooks.outbox import enqueue


def _check_types(event_types: Sequence[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(SUBSCRIBABLE))
    if unknown or not event_types:
        raise InvalidInput(
            f"unknown or missing event types: {unknown or 'none given'}",
            allowed_event_types=list(SUBSCRIBABLE),
        )
    return sorted(set(event_types), key=SUBSCRIBABLE.index)


def create_endpoint(
    session: Session,
    *,
    workspace_id: str,
    url: str,
    event_types: Sequence[str],
    description: str,
    enabled: bool,
    actor: str,
    now: datetime,
    settings: Settings,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (answered only now)."""
    check_destination(url, allow_private=settings.webhook_allow_private)
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        id=new_id("whk"),
        workspace_id=workspace_id,
        url=url,
        description=description,
        event_types=_check_types(event_types),
        enabled=enabled,
        secret=secret,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def list_endpoints(session: Session, *, workspace_id: str) -> Sequence[WebhookEndpoint]:
    """The workspace's endpoints, oldest first."""
    return session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.workspace_id == workspace_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).all()


def get_endpoint(session: Session, *, workspace_id: str, endpoint_id: str) -> WebhookEndpoint:
    """One endpoint of the workspace (NotFound otherwise, whoever owns it)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.workspace_id != workspace_id:
        raise NotFound(f"webhook {endpoint_id} not found", webhook_id=endpoint_id)
    return endpoint


def update_endpoint(
    session: Session,
    *,
    endpoint: WebhookEndpoint,
    url: str | None,
    event_types: Sequence[str] | None,
    description: str | None,
    enabled: bool | None,
    now: datetime,
    settings: Settings,
) -> WebhookEndpoint:
    """Change what is given (None: unchanged); a new URL is checked like a new endpoint."""
    if url is not None:
        check_destination(url, allow_private=settings.webhook_allow_private)
        endpoint.url = url
    if event_types is not None:
        endpoint.event_types = _check_types(event_types)
    if description is not None:
        endpoint.description = description
    if enabled is not None:
        endpoint.enabled = enabled
    endpoint.updated_at = now
    session.flush()
    return endpoint


def delete_endpoint(session: Session, *, endpoint: WebhookEndpoint) -> None:
    """Remove the endpoint with its deliveries and their attempts."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()


def rotate_secret(
    session: Session, *, endpoint: WebhookEndpoint, overlap_seconds: int, now: datetime
) -> tuple[WebhookEndpoint, str]:
    """A new secret; the old one still signs (a second signature) for ``overlap_seconds``."""
    secret = signing.new_secret()
    endpoint.previous_secret = endpoint.secret if overlap_seconds > 0 else None
    endpoint.previous_secret_expires_at = (
        now + timedelta(seconds=overlap_seconds) if overlap_seconds > 0 else None
    )
    endpoint.secret = secret
    endpoint.updated_at = now
    session.flush()
    return endpoint, secret


def send_test(
    session: Session, *, endpoint: WebhookEndpoint, actor: str, now: datetime, settings: Settings
) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery to the endpoint (to check a receiver)."""
    data = {"webhook_id": endpoint.id, "actor": actor}
    delivery = enqueue(
        session,
        endpoint=endpoint,
        event_type="webhook.test",
        source_key=f"test:{new_id('t')}",
        payload=envelope("webhook.test", now, data),
        now=now,
        settings=settings,
    )
    assert delivery is not None
    return delivery


def list_deliveries(
    session: Session, *, endpoint: WebhookEndpoint, limit: int, cursor: str | None
) -> tuple[Sequence[WebhookDelivery], str | None]:
    """The endpoint's deliveries, newest first, and the cursor of the next page."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if cursor:
        after = session.get(WebhookDelivery, cursor)
        if after is None or after.endpoint_id != endpoint.id:
            raise InvalidInput("unknown cursor", cursor=cursor)
        key = tuple_(WebhookDelivery.created_at, WebhookDelivery.id)
        query = query.where(key < tuple_(after.created_at, after.id))
    rows = session.scalars(
        query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(
            limit + 1
        )
    ).all()
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def attempts_of(
    session: Session, deliveries: Sequence[WebhookDelivery]
) -> dict[str, list[WebhookAttempt]]:
    """Every attempt of each delivery, in order."""
    found: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if found:
        for row in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(found)))
            .order_by(WebhookAttempt.id)
        ):
            found[row.delivery_id].append(row)
    return found


def redeliver(
    session: Session,
    *,
    endpoint: WebhookEndpoint,
    delivery_id: str,
    now: datetime,
    settings: Settings,
) -> WebhookDelivery:
    """Send a delivery again now (same webhook-id and payload): a new round of attempts."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint.id:
        raise NotFound(f"delivery {delivery_id} not found", delivery_id=delivery_id)
    delivery.state = "pending"
    delivery.attempts = 0
    delivery.trigger = "redeliver"
    delivery.next_attempt_at = now
    delivery.deadline_at = now + timedelta(seconds=settings.webhook_deadline_seconds)
    delivery.updated_at = now
    session.flush()
    return delivery
