"""The durable job queue's front: enqueue (the outbox row), read and list jobs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.errors import NotFound
from shipway.ids import new_id, utcnow
from shipway.jobs.handlers import queue_of
from shipway.jobs.models import Job
from shipway.states import record_event


def enqueue(
    session: Session,
    *,
    workspace_id: str,
    kind: str,
    actor: str,
    params: dict[str, Any] | None = None,
    deployment_id: str | None = None,
    environment: str | None = None,
    version_id: str | None = None,
    release_id: str | None = None,
    serial_key: str | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    deadline_seconds: float | None = None,
    not_before: datetime | None = None,
) -> Job:
    """Write a queued Job in the caller's transaction (the outbox); dispatch after commit."""
    settings = get_settings()
    now = utcnow()
    job = Job(
        id=new_id("job"),
        workspace_id=workspace_id,
        kind=kind,
        queue=queue or queue_of(kind),
        state="queued",
        params=params or {},
        progress={},
        actor=actor,
        deployment_id=deployment_id,
        environment=environment,
        version_id=version_id,
        release_id=release_id,
        serial_key=serial_key,
        attempts=0,
        max_attempts=max_attempts or settings.max_attempts,
        deadline_at=now + timedelta(seconds=deadline_seconds or settings.job_deadline_seconds),
        dispatch_count=0,
        not_before=not_before,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    record_event(
        session,
        workspace_id=workspace_id,
        subject_type="job",
        subject_id=job.id,
        from_state=None,
        to_state="queued",
        reason=f"{kind} job accepted",
        actor=actor,
        deployment_id=deployment_id,
        job_id=job.id,
    )
    return job


def get_job(session: Session, *, job_id: str, workspace_id: str | None = None) -> Job:
    """One job; another workspace's job is NotFound."""
    job = session.get(Job, job_id)
    if job is None or (workspace_id is not None and job.workspace_id != workspace_id):
        raise NotFound(f"job {job_id} not found", job_id=job_id)
    return job


def list_jobs(
    session: Session,
    *,
    workspace_id: str,
    state: str | None = None,
    kind: str | None = None,
    deployment_id: str | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> Sequence[Job]:
    """Jobs of a workspace, newest first, with filters and keyset paging."""
    query = select(Job).where(Job.workspace_id == workspace_id)
    if state:
        query = query.where(Job.state == state)
    if kind:
        query = query.where(Job.kind == kind)
    if deployment_id:
        query = query.where(Job.deployment_id == deployment_id)
    if before is not None:
        created, job_id = before
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return session.scalars(query).all()
