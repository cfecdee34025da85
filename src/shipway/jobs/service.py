"""The durable job queue: enqueue (outbox), claim with a lease, heartbeat, finish, reap."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.errors import Conflict, NotFound
from shipway.ids import new_id, utcnow
from shipway.jobs.models import Job
from shipway.states import JOB, TERMINAL_JOB_STATES, record_event, transition

QUEUES = ("builds", "rollouts")
QUEUE_OF_KIND = {
    "publish": "builds",
    "promote": "rollouts",
    "rollback": "rollouts",
    "retire": "rollouts",
    "noop": "rollouts",
}


def serial_key_for(deployment_id: str, environment: str) -> str:
    """Jobs sharing this key run one at a time, in order."""
    return f"{deployment_id}:{environment}"


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
        queue=queue or QUEUE_OF_KIND[kind],
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


def _earlier_in_line(*, job_id: str, serial_key: str | None, created_at: datetime) -> Any:
    return and_(
        Job.serial_key == serial_key,
        Job.id != job_id,
        or_(
            Job.state == "running",
            and_(
                Job.state == "queued",
                # a delayed job (retire after the scale-down delay) blocks no one until due
                or_(Job.not_before.is_(None), Job.not_before <= utcnow()),
                or_(
                    Job.created_at < created_at,
                    and_(Job.created_at == created_at, Job.id < job_id),
                ),
            ),
        ),
    )


def queue_position(session: Session, *, job: Job) -> int | None:
    """1 when next to run for its (deployment, environment); None if not queued."""
    if job.state != "queued":
        return None
    if job.serial_key is None:
        return 1
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            _earlier_in_line(job_id=job.id, serial_key=job.serial_key, created_at=job.created_at)
        )
    )
    return int(ahead or 0) + 1


@dataclass(frozen=True)
class Claim:
    """A claimed job: its id, kind, attempt number, lease owner and parameters."""

    job_id: str
    kind: str
    attempt: int
    owner: str
    serial_key: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def claim(session: Session, *, job_id: str, owner: str) -> Claim | None:
    """Take a queued job with a lease, or None if it is not ours to run now.

    None when the job is not queued (already claimed: a duplicate delivery; or
    finished), or another job of the same (deployment, environment) is running
    or queued before it.
    """
    # Plain columns, not the ORM object: nothing to refresh after the conditional UPDATE.
    job = session.execute(
        select(
            Job.id,
            Job.kind,
            Job.state,
            Job.attempts,
            Job.params,
            Job.serial_key,
            Job.not_before,
            Job.created_at,
        ).where(Job.id == job_id)
    ).first()
    if job is None or job.state != "queued":
        return None
    if job.not_before is not None and job.not_before > utcnow():
        # too early: the relay sends it again once it is due
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(dispatched_at=None)
            .execution_options(synchronize_session=False)
        )
        return None
    if job.serial_key is not None:
        earlier = _earlier_in_line(
            job_id=job.id, serial_key=job.serial_key, created_at=job.created_at
        )
        blocker = session.scalar(select(Job.id).where(earlier).limit(1))
        if blocker is not None:
            return None
    now = utcnow()
    lease = timedelta(seconds=get_settings().lease_seconds)
    # Only a job in a serial line can hit the one-running-per-line unique index; the
    # savepoint that lets this transaction survive that error is kept for those alone.
    guard = session.begin_nested() if job.serial_key is not None else nullcontext()
    try:
        with guard:
            transition(
                session,
                JOB,
                subject_id=job_id,
                from_state="queued",
                to_state="running",
                reason=f"claimed by {owner} (attempt {job.attempts + 1})",
                actor=owner,
                job_id=job_id,
                values={
                    "lease_owner": owner,
                    "lease_expires_at": now + lease,
                    "heartbeat_at": now,
                    "attempts": Job.attempts + 1,
                    "started_at": func.coalesce(Job.started_at, now),
                },
            )
    except IntegrityError:
        return None  # another job of this serial key is running (unique index)
    except Conflict:
        return None  # a concurrent claimer won
    return Claim(
        job_id=job_id,
        kind=job.kind,
        attempt=job.attempts + 1,
        owner=owner,
        serial_key=job.serial_key,
        params=dict(job.params or {}),
    )


def heartbeat(session: Session, *, job_id: str, owner: str) -> bool:
    """Renew the lease; False if this owner no longer holds it (job reaped or finished)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.lease_owner == owner)
        .values(
            lease_expires_at=now + timedelta(seconds=get_settings().lease_seconds),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def holds_lease(session: Session, *, job_id: str, owner: str) -> bool:
    """Whether ``owner`` still runs this job."""
    row = session.execute(select(Job.state, Job.lease_owner).where(Job.id == job_id)).first()
    return row is not None and row.state == "running" and row.lease_owner == owner


def lease_and_cancel(session: Session, *, job_id: str, owner: str) -> tuple[bool, bool]:
    """(whether ``owner`` still runs this job, whether an operator asked it to stop)."""
    row = session.execute(
        select(Job.state, Job.lease_owner, Job.cancel_requested).where(Job.id == job_id)
    ).first()
    if row is None:
        return False, False
    return row.state == "running" and row.lease_owner == owner, bool(row.cancel_requested)


def cancel_requested(session: Session, *, job_id: str) -> bool:
    """Whether an operator asked this job to stop."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def set_phase(
    session: Session,
    *,
    job_id: str,
    owner: str,
    phase: str,
    progress: dict[str, Any] | None = None,
) -> None:
    """Record the phase a running job entered, as a column and an Event."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != "running" or job.lease_owner != owner:
        raise Conflict(f"job {job_id} is no longer held by {owner}", code="lease_lost")
    previous = job.phase
    job.phase = phase
    job.progress = {**(progress or {})}
    job.updated_at = utcnow()
    record_event(
        session,
        workspace_id=job.workspace_id,
        subject_type="job_phase",
        subject_id=job_id,
        from_state=previous,
        to_state=phase,
        reason=f"phase {phase}",
        actor=owner,
        deployment_id=job.deployment_id,
        job_id=job_id,
        data=progress or {},
    )


def set_progress(session: Session, *, job_id: str, owner: str, progress: dict[str, Any]) -> None:
    """Update the progress of a running job (no Event: progress is frequent)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.lease_owner == owner)
        .values(progress=progress, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def finish(
    session: Session,
    *,
    job_id: str,
    owner: str,
    state: str,
    reason: str = "",
    result: dict[str, Any] | None = None,
    failure_reason: str | None = None,
    failure_diagnostics: dict[str, Any] | None = None,
) -> None:
    """End a running job held by ``owner`` in a terminal state."""
    if state not in TERMINAL_JOB_STATES:
        raise ValueError(f"{state} is not terminal")
    transition(
        session,
        JOB,
        subject_id=job_id,
        from_state="running",
        to_state=state,
        reason=reason or state,
        actor=owner,
        job_id=job_id,
        values={
            "finished_at": utcnow(),
            "lease_owner": None,
            "lease_expires_at": None,
            "result": result,
            "failure_reason": failure_reason,
            "failure_diagnostics": failure_diagnostics,
        },
        where=(Job.lease_owner == owner,),
    )


def request_cancel(session: Session, *, job_id: str, workspace_id: str, actor: str) -> Job:
    """Cancel a queued job now, or ask a running one to stop between steps."""
    job = get_job(session, job_id=job_id, workspace_id=workspace_id)
    if job.state in TERMINAL_JOB_STATES:
        raise Conflict(
            f"job {job_id} already ended ({job.state})",
            code="job_not_cancellable",
            state=job.state,
        )
    if job.state == "queued":
        transition(
            session,
            JOB,
            subject_id=job_id,
            from_state="queued",
            to_state="cancelled",
            reason="cancelled before it started",
            actor=actor,
            values={
                "finished_at": utcnow(),
                "cancel_requested": True,
                "failure_reason": "cancelled",
                "failure_diagnostics": cancelled_diagnostics(actor),
            },
        )
        from shipway.jobs import handlers

        handlers.compensate(session, job, "cancelled", cancelled_diagnostics(actor))
    else:
        job.cancel_requested = True
        record_event(
            session,
            workspace_id=job.workspace_id,
            subject_type="job",
            subject_id=job_id,
            from_state=job.state,
            to_state=job.state,
            reason="cancellation requested",
            actor=actor,
            deployment_id=job.deployment_id,
            job_id=job_id,
        )
    session.flush()
    session.refresh(job)
    return job


def cancelled_diagnostics(actor: str) -> dict[str, Any]:
    """Diagnostics of a job stopped on request."""
    return {
        "title": "Cancelled",
        "description": f"The job was cancelled by {actor}.",
        "action": "Submit the operation again if it is still wanted.",
        "evidence": {"actor": actor},
    }


def worker_lost_diagnostics(job: Job) -> dict[str, Any]:
    """Diagnostics of a job whose worker stopped heartbeating too many times."""
    return {
        "title": "Worker lost",
        "description": (
            f"The worker running this job stopped renewing its lease {job.attempts} time(s); "
            "the job was not retried again."
        ),
        "action": "Check worker logs and resources (memory, OOM kills), then resubmit.",
        "evidence": {
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "last_lease_owner": job.lease_owner,
            "last_heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
            "phase": job.phase,
        },
    }


def expired_leases(session: Session, *, now: datetime, limit: int = 100) -> Sequence[Job]:
    """Running jobs whose lease has expired (their worker is presumed dead)."""
    return session.scalars(
        select(Job)
        .where(Job.state == "running", Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
    ).all()


def reap(session: Session, *, job: Job, now: datetime, actor: str = "reaper") -> str | None:
    """Requeue or fail one job whose lease expired; returns the new state or None if it moved."""
    from shipway.errors import InvalidTransition

    retry = job.attempts < job.max_attempts
    target = "queued" if retry else "failed"
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
    if retry:
        values |= {"dispatched_at": None}
        reason = f"worker_lost: lease of {job.lease_owner} expired; retrying"
    else:
        values |= {
            "finished_at": now,
            "failure_reason": "worker_lost",
            "failure_diagnostics": worker_lost_diagnostics(job),
        }
        reason = "worker_lost: lease expired and attempts are exhausted"
    try:
        transition(
            session,
            JOB,
            subject_id=job.id,
            from_state="running",
            to_state=target,
            reason=reason,
            actor=actor,
            values=values,
            where=(Job.lease_expires_at < now, Job.lease_owner == job.lease_owner),
        )
    except InvalidTransition:
        return None
    return target


def deadline_passed_queued(session: Session, *, now: datetime, limit: int = 100) -> Sequence[Job]:
    """Queued jobs whose deadline passed before any worker finished them."""
    return session.scalars(
        select(Job).where(Job.state == "queued", Job.deadline_at < now).limit(limit)
    ).all()


def due_for_dispatch(session: Session, *, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs never sent, or sent but unclaimed for too long."""
    stale = now - timedelta(seconds=get_settings().redispatch_after_seconds)
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.state == "queued",
            or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale),
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [(row.id, row.queue) for row in rows]


def mark_dispatched(session: Session, *, job_ids: Sequence[str], now: datetime) -> None:
    """Remember that these jobs were handed to the broker."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.state == "queued")
            .values(dispatched_at=now, dispatch_count=Job.dispatch_count + 1)
            .execution_options(synchronize_session=False)
        )


def next_in_line(session: Session, *, serial_key: str) -> tuple[str, str] | None:
    """(id, queue) of the oldest queued job with this serial key."""
    row = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.serial_key == serial_key,
            Job.state == "queued",
            or_(Job.not_before.is_(None), Job.not_before <= utcnow()),
        )
        .order_by(Job.created_at, Job.id)
        .limit(1)
    ).first()
    return (row.id, row.queue) if row else None


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
