"""The lease protocol: claim a queued job, heartbeat, record phases, finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.db import UTCDateTime
from shipway.errors import Conflict, InvalidTransition, NotFound
from shipway.ids import utcnow
from shipway.jobs.lines import ahead_of_row_in_line
from shipway.jobs.machine import JOB, TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from shipway.states import record_event


@dataclass(frozen=True)
class Claim:
    """A claimed job: its id, kind, attempt number, lease owner and parameters."""

    job_id: str
    kind: str
    attempt: int
    owner: str
    serial_key: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


_JOBS = cast(Table, Job.__table__)
_NOW = bindparam("now", type_=UTCDateTime())
# Built once, with bind parameters: a claim is on every job's clock, and building a
# statement and its cache key per call cost about 0.3 ms of CPU (py-spy, bench/README.md).
_CLAIM = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "queued",
        or_(_JOBS.c.not_before.is_(None), _JOBS.c.not_before <= _NOW),
        or_(_JOBS.c.serial_key.is_(None), ~ahead_of_row_in_line(_NOW)),
    )
    .values(
        state="running",
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("expires", type_=UTCDateTime()),
        heartbeat_at=_NOW,
        attempts=_JOBS.c.attempts + 1,
        started_at=func.coalesce(_JOBS.c.started_at, _NOW),
        updated_at=_NOW,
    )
    .returning(
        _JOBS.c.kind,
        _JOBS.c.attempts,
        _JOBS.c.params,
        _JOBS.c.serial_key,
        _JOBS.c.workspace_id,
        _JOBS.c.deployment_id,
    )
)
_TOO_EARLY = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "queued",
        _JOBS.c.not_before > _NOW,
    )
    .values(dispatched_at=None)
)


_FINISH = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "running",
        _JOBS.c.lease_owner == bindparam("owner"),
    )
    .values(
        state=bindparam("to_state"),
        finished_at=_NOW,
        updated_at=_NOW,
        lease_owner=None,
        lease_expires_at=None,
        result=bindparam("to_result"),
        failure_reason=bindparam("to_failure_reason"),
        failure_diagnostics=bindparam("to_failure_diagnostics"),
    )
    .returning(_JOBS.c.workspace_id, _JOBS.c.deployment_id)
)


def claim(session: Session, *, job_id: str, owner: str) -> Claim | None:
    """Take a queued job with a lease, or None if it is not ours to run now.

    One conditional UPDATE (queued, due, and no job of its (deployment, environment)
    running or queued before it) and the job's Event. None when the job is not queued
    (already claimed: a duplicate delivery; or finished), not due yet (then the relay
    sends it again once due), or behind another job of its line.

    Raises ``IntegrityError`` when another job of the same line was claimed at the same
    instant (the one-running-per-line unique index): the caller's transaction is then
    void, and the job waits its turn (``runner.run_job`` returns None).
    """
    now = utcnow()
    expires = now + timedelta(seconds=get_settings().lease_seconds)
    row = session.execute(
        _CLAIM, {"job_id": job_id, "owner": owner, "now": now, "expires": expires}
    ).first()
    if row is None:
        session.execute(_TOO_EARLY, {"job_id": job_id, "now": now})
        return None
    record_event(
        session,
        workspace_id=row.workspace_id,
        subject_type=JOB.name,
        subject_id=job_id,
        from_state="queued",
        to_state="running",
        reason=f"claimed by {owner} (attempt {row.attempts})",
        actor=owner,
        deployment_id=row.deployment_id,
        job_id=job_id,
    )
    return Claim(
        job_id=job_id,
        kind=row.kind,
        attempt=row.attempts,
        owner=owner,
        serial_key=row.serial_key,
        params=dict(row.params or {}),
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
    """End a running job held by ``owner`` in a terminal state (one UPDATE, one Event)."""
    if state not in TERMINAL_JOB_STATES:
        raise ValueError(f"{state} is not terminal")
    values = {
        "job_id": job_id,
        "owner": owner,
        "now": utcnow(),
        "to_state": state,
        "to_result": result,
        "to_failure_reason": failure_reason,
        "to_failure_diagnostics": failure_diagnostics,
    }
    row = session.execute(_FINISH, values).first()
    if row is None:
        current = session.scalar(select(Job.state).where(Job.id == job_id))
        if current is None:
            raise NotFound(f"job {job_id} not found", subject_id=job_id)
        raise InvalidTransition(
            f"job {job_id} is {current} (lease owner checked), not running by {owner}",
            machine=JOB.name,
            subject_id=job_id,
            from_state="running",
            to_state=state,
            current_state=current,
        )
    record_event(
        session,
        workspace_id=row.workspace_id,
        subject_type=JOB.name,
        subject_id=job_id,
        from_state="running",
        to_state=state,
        reason=reason or state,
        actor=owner,
        deployment_id=row.deployment_id,
        job_id=job_id,
    )
    loaded = session.identity_map.get(session.identity_key(Job, job_id))
    if loaded is not None:  # keep an object already in the session in step
        session.refresh(loaded)
