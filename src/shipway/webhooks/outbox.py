"""The outbox: new audit events (after a stored cursor) and stuck jobs become deliveries.

It reads ``events`` in id order after ``webhook_cursor.last_event_id`` and creates one
delivery per matching enabled endpoint of the event's workspace, in one transaction with
the cursor move (the cursor row is locked, so two relays never read the same batch).
Rollouts are untouched: they only write their audit rows, as before.

Ids are handed out when rows are inserted but become visible when their transaction
commits, so a later id can be seen before an earlier one. The cursor stops at a gap in
the ids until the event after it is ``GAP_WAIT`` old (a rolled-back transaction leaves a
gap for good); an event whose transaction stays open longer than that is missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from shipway.config import Settings
from shipway.events.models import Event
from shipway.ids import new_id, rfc3339
from shipway.queue.queries import running_jobs, stuck_jobs
from shipway.webhooks.catalog import envelope, event_type_of, payload_of
from shipway.webhooks.models import WebhookCursor, WebhookDelivery, WebhookEndpoint

GAP_WAIT = timedelta(seconds=10)
BATCH = 500
CURSOR = "events"


def enqueue(
    session: Session,
    *,
    endpoint: WebhookEndpoint,
    event_type: str,
    source_key: str,
    payload: dict[str, Any],
    now: datetime,
    settings: Settings,
) -> WebhookDelivery | None:
    """A pending delivery of ``payload`` to ``endpoint`` (None if this source has one)."""
    taken = session.scalar(
        select(
            exists().where(
                WebhookDelivery.endpoint_id == endpoint.id,
                WebhookDelivery.source_key == source_key,
            )
        )
    )
    if taken:
        return None
    delivery = WebhookDelivery(
        id=new_id("msg"),
        workspace_id=endpoint.workspace_id,
        endpoint_id=endpoint.id,
        event_type=event_type,
        source_key=source_key,
        payload=payload,
        state="pending",
        attempts=0,
        trigger="auto",
        next_attempt_at=now,
        deadline_at=now + timedelta(seconds=settings.webhook_deadline_seconds),
        created_at=now,
        updated_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery


def _subscribers(session: Session, workspace_id: str | None = None) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(True))
    if workspace_id is not None:
        query = query.where(WebhookEndpoint.workspace_id == workspace_id)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at)))


def _cursor(session: Session) -> WebhookCursor:
    cursor = session.scalars(
        select(WebhookCursor).where(WebhookCursor.name == CURSOR).with_for_update()
    ).first()
    if cursor is None:  # the migration makes it; a database made from metadata may not have it
        cursor = WebhookCursor(name=CURSOR, last_event_id=0)
        session.add(cursor)
        session.flush()
    return cursor


def _readable(events: Sequence[Event], *, after: int, now: datetime) -> list[Event]:
    """The events up to the first gap in ids that may still be filled (see module doc)."""
    ready: list[Event] = []
    last = after
    for event in events:
        if event.id != last + 1 and event.created_at > now - GAP_WAIT:
            break
        ready.append(event)
        last = event.id
    return ready


def collect_events(session: Session, *, now: datetime, settings: Settings) -> int:
    """Turn new audit events into deliveries; answers how many deliveries were made."""
    cursor = _cursor(session)
    events = session.scalars(
        select(Event).where(Event.id > cursor.last_event_id).order_by(Event.id).limit(BATCH)
    ).all()
    made = 0
    endpoints: dict[str, list[WebhookEndpoint]] = {}
    for event in _readable(events, after=cursor.last_event_id, now=now):
        cursor.last_event_id = event.id
        event_type = event_type_of(event)
        if event_type is None:
            continue
        if event.workspace_id not in endpoints:
            endpoints[event.workspace_id] = _subscribers(session, event.workspace_id)
        wanted = [
            e
            for e in endpoints[event.workspace_id]
            if event_type in e.event_types and e.created_at <= event.created_at
        ]
        payload = payload_of(session, event, event_type) if wanted else {}
        for endpoint in wanted:
            source = f"event:{event.id}"
            made += bool(
                enqueue(
                    session,
                    endpoint=endpoint,
                    event_type=event_type,
                    source_key=source,
                    payload=payload,
                    now=now,
                    settings=settings,
                )
            )
    cursor.updated_at = now
    return made


def collect_stuck_jobs(session: Session, *, now: datetime, settings: Settings) -> int:
    """A ``job.stuck`` delivery per stuck job, reason and stuck-since (as GET /queue shows)."""
    endpoints = [e for e in _subscribers(session) if "job.stuck" in e.event_types]
    if not endpoints:
        return 0
    made = 0
    running = running_jobs(session)
    for job, reason, since in stuck_jobs(session, now=now, running=running):
        data = {
            "job_id": job.id,
            "kind": job.kind,
            "queue": job.queue,
            "state": job.state,
            "stuck_reason": reason,
            "stuck_since": rfc3339(since),
            "attempts": job.attempts,
            "deployment_id": job.deployment_id,
            "environment": job.environment,
            "release_id": job.release_id,
        }
        source = f"stuck:{job.id}:{reason}:{int(since.timestamp())}"
        for endpoint in endpoints:
            if endpoint.workspace_id != job.workspace_id:
                continue
            made += bool(
                enqueue(
                    session,
                    endpoint=endpoint,
                    event_type="job.stuck",
                    source_key=source,
                    payload=envelope("job.stuck", now, data),
                    now=now,
                    settings=settings,
                )
            )
    return made
