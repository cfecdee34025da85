"""The lease protocol: claim a queued job, heartbeat, record phases, finish."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.errors import Conflict
from shipway.ids import utcnow
from shipway.jobs.lines import earlier_in_line
from shipway.jobs.machine import JOB, TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from shipway.states import record_event, transition


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
        earlier = earlier_in_line(
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
