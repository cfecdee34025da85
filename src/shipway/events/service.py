"""Reading the audit trail."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.events.models import Event


def list_events(
    session: Session,
    *,
    workspace_id: str,
    deployment_id: str | None = None,
    job_id: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> Sequence[Event]:
    """Events in order of occurrence, after ``after_id``."""
    query = select(Event).where(Event.workspace_id == workspace_id, Event.id > after_id)
    if deployment_id:
        query = query.where(Event.deployment_id == deployment_id)
    if job_id:
        query = query.where(Event.job_id == job_id)
    return session.scalars(query.order_by(Event.id).limit(limit)).all()
