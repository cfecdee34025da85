"""HTTP routes of webhooks (admin scope): endpoints, secret rotation, deliveries, redelivery."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Body, Depends, Query
from sqlalchemy.orm import Session

from shipway.auth.deps import admin, get_session
from shipway.auth.service import Principal
from shipway.config import get_settings
from shipway.ids import utcnow
from shipway.schemas import error_responses
from shipway.webhooks import service
from shipway.webhooks.models import WebhookDelivery, WebhookEndpoint
from shipway.webhooks.schemas import (
    AttemptRead,
    DeliveryList,
    DeliveryRead,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookRead,
    WebhookRotate,
    WebhookUpdate,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
ONE = "/{webhook_id}"


def _read(row: WebhookEndpoint) -> WebhookRead:
    return WebhookRead.model_validate(row)


def _endpoint(session: Session, principal: Principal, webhook_id: str) -> WebhookEndpoint:
    return service.get_endpoint(
        session, workspace_id=principal.workspace_id, endpoint_id=webhook_id
    )


def _deliveries(session: Session, rows: Sequence[WebhookDelivery]) -> list[DeliveryRead]:
    attempts = service.attempts_of(session, rows)
    return [
        DeliveryRead.model_validate(row).model_copy(
            update={"attempt_log": [AttemptRead.model_validate(a) for a in attempts[row.id]]}
        )
        for row in rows
    ]


@router.get("", response_model=WebhookList, responses=error_responses(401, 403))
def list_webhooks(
    principal: Principal = Depends(admin), session: Session = Depends(get_session)
) -> WebhookList:
    """The workspace's webhook endpoints (secrets are never shown again)."""
    with session.begin():
        rows = service.list_endpoints(session, workspace_id=principal.workspace_id)
        return WebhookList(data=[_read(row) for row in rows])


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses=error_responses(400, 401, 403, 413, 422),
)
def create_webhook(
    body: WebhookCreate,
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> WebhookCreated:
    """A new endpoint; its signing secret (whsec_…) is answered only now."""
    with session.begin():
        row, secret = service.create_endpoint(
            session,
            workspace_id=principal.workspace_id,
            actor=principal.actor,
            now=utcnow(),
            settings=get_settings(),
            **body.model_dump(),
        )
        return WebhookCreated(**_read(row).model_dump(), secret=secret)


@router.get(ONE, response_model=WebhookRead, responses=error_responses(401, 403, 404))
def get_webhook(
    webhook_id: str, principal: Principal = Depends(admin), session: Session = Depends(get_session)
) -> WebhookRead:
    """One endpoint."""
    with session.begin():
        return _read(_endpoint(session, principal, webhook_id))


@router.patch(
    ONE, response_model=WebhookRead, responses=error_responses(400, 401, 403, 404, 413, 422)
)
def update_webhook(
    webhook_id: str,
    body: WebhookUpdate,
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> WebhookRead:
    """Change the URL, event types, description or enabled (left out: unchanged)."""
    with session.begin():
        row = service.update_endpoint(
            session,
            endpoint=_endpoint(session, principal, webhook_id),
            now=utcnow(),
            settings=get_settings(),
            **body.model_dump(),
        )
        return _read(row)


@router.delete(ONE, response_model=WebhookRead, responses=error_responses(401, 403, 404))
def delete_webhook(
    webhook_id: str, principal: Principal = Depends(admin), session: Session = Depends(get_session)
) -> WebhookRead:
    """Remove the endpoint, its deliveries and their log; answers what was removed."""
    with session.begin():
        row = _endpoint(session, principal, webhook_id)
        removed = _read(row)
        service.delete_endpoint(session, endpoint=row)
        return removed


@router.post(
    ONE + "/rotate",
    status_code=201,
    response_model=WebhookCreated,
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def rotate_webhook_secret(
    webhook_id: str,
    body: WebhookRotate = Body(default_factory=WebhookRotate),
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> WebhookCreated:
    """A new secret; both sign (two signatures) for ``overlap_seconds``, then only the new."""
    with session.begin():
        row, secret = service.rotate_secret(
            session,
            endpoint=_endpoint(session, principal, webhook_id),
            overlap_seconds=body.overlap_seconds,
            now=utcnow(),
        )
        return WebhookCreated(**_read(row).model_dump(), secret=secret)


@router.post(
    ONE + "/test",
    status_code=202,
    response_model=DeliveryRead,
    responses=error_responses(401, 403, 404),
)
def send_test_webhook(
    webhook_id: str, principal: Principal = Depends(admin), session: Session = Depends(get_session)
) -> DeliveryRead:
    """Queue a ``webhook.test`` delivery to the endpoint (sent by the relay's webhook lane)."""
    with session.begin():
        row = _endpoint(session, principal, webhook_id)
        delivery = service.send_test(
            session, endpoint=row, actor=principal.actor, now=utcnow(), settings=get_settings()
        )
        return _deliveries(session, [delivery])[0]


@router.get(
    ONE + "/deliveries", response_model=DeliveryList, responses=error_responses(401, 403, 404, 422)
)
def list_webhook_deliveries(
    webhook_id: str,
    limit: int = Query(default=50, ge=1, le=200),
    cursor: str | None = Query(default=None, max_length=40),
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts (codes, answers)."""
    with session.begin():
        row = _endpoint(session, principal, webhook_id)
        rows, next_cursor = service.list_deliveries(
            session, endpoint=row, limit=limit, cursor=cursor
        )
        return DeliveryList(data=_deliveries(session, rows), next_cursor=next_cursor)


@router.post(
    ONE + "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryRead,
    responses=error_responses(401, 403, 404),
)
def redeliver_webhook(
    webhook_id: str,
    delivery_id: str,
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> DeliveryRead:
    """Send the delivery again (same webhook-id and payload): a new round of attempts."""
    with session.begin():
        row = _endpoint(session, principal, webhook_id)
        delivery = service.redeliver(
            session, endpoint=row, delivery_id=delivery_id, now=utcnow(), settings=get_settings()
        )
        return _deliveries(session, [delivery])[0]
