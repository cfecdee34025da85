"""The durable job queue's front: enqueue (the outbox row), read and list jobs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from shipway.config import get_settings
from shipway.errors import NotFound
from shipway.ids import new_id, utcnow
from shipway.jobs import lease_sql as sql
from shipway.jobs.handlers import queue_of
from shipway.jobs.models import Job
from shipway.states import record_event

JOB_COLUMNS = tuple(column.name for column in Job.__table__.columns)


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
        phase=None,
        params=params or {},
        progress={},
        failure_reason=None,
        actor=actor,
        deployment_id=deployment_id,
        environment=environment,
        version_id=version_id,
        release_id=release_id,
        serial_key=serial_key,
        attempts=0,
        max_attempts=max_attempts or settings.max_attempts,
        lease_owner=None,
        lease_expires_at=None,
        heartbeat_at=None,
        deadline_at=now + timedelta(seconds=deadline_seconds or settings.job_deadline_seconds),
        dispatched_at=None,
        dispatch_count=0,
        not_before=not_before,
        cancel_requested=False,
        paused=False,
        control_request=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
    )
    reason = f"{kind} job accepted"
    if session.get_bind().dialect.name == "postgresql":
        _insert_with_event(session, job, reason=reason)
        return job
    session.add(job)
    session.flush()
    record_event(
        session,
        workspace_id=workspace_id,
        subject_type="job",
        subject_id=job.id,
        from_state=None,
        to_state="queued",
        reason=reason,
        actor=actor,
        deployment_id=deployment_id,
        job_id=job.id,
    )
    return job


def _insert_with_event(session: Session, job: Job, *, reason: str) -> None:
    """PostgreSQL: the job's INSERT and its Event in one statement (``lease_sql``), then
    ``job`` joins the session as the row it is, with no SQL (every column is set)."""
    session.flush()  # rows the job refers to (a new workspace) go first
    values = {
        f"v_{column}": getattr(job, column)
        for column in JOB_COLUMNS
        if column not in sql.NULL_AT_ENQUEUE
    }
    session.execute(sql.ENQUEUE_LOGGED, {**values, "event_reason": reason, "now": job.created_at})
    make_transient_to_detached(job)
    for column in sql.NULL_AT_ENQUEUE:  # left out of the INSERT: NULL there, None here
        set_committed_value(job, column, None)
    session.add(job)


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
