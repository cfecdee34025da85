"""The lease protocol: claim a queued job, heartbeat, record phases, finish."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.errors import Conflict
from shipway.ids import utcnow
from shipway.jobs import lease_sql as sql
from shipway.jobs.machine import JOB, TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from shipway.states import record_event, refuse


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

    One conditional UPDATE (queued, due, and no job of its (deployment, environment)
    running or queued before it) and the job's Event. None when the job is not queued
    (already claimed: a duplicate delivery; or finished), not due yet (then the relay
    sends it again once due), or behind another job of its line.

    Raises ``IntegrityError`` when another job of the same line was claimed at the same
    instant (the one-running-per-line unique index): the caller's transaction is then
    void, and the job waits its turn (``runner.run_job`` returns None).
    """
    values = _claim_values(job_id, owner)
    row = _logged(
        session,
        sql.CLAIM,
        sql.CLAIM_LOGGED,
        values,
        lambda row: ("queued", "running", f"claimed by {owner} (attempt {row.attempts})"),
    )
    return _claimed(session, row, values)


def claim_logged(conn: Connection, *, job_id: str, owner: str) -> Claim | None:
    """PostgreSQL: ``claim`` as one statement (``lease_sql.CLAIM_LOGGED``) on a Core
    connection in autocommit (``db.one_statement``): the runner's path, no ORM session."""
    values = _claim_values(job_id, owner)
    return _claimed(conn, conn.execute(sql.CLAIM_LOGGED, values).first(), values)


def _claim_values(job_id: str, owner: str) -> dict[str, Any]:
    now = utcnow()
    expires = now + timedelta(seconds=get_settings().lease_seconds)
    return {"job_id": job_id, "owner": owner, "now": now, "expires": expires}


def _claimed(db: Session | Connection, row: Any, values: dict[str, Any]) -> Claim | None:
    """The Claim of a claim's row; no row: the job is left as it is (not due yet: its
    dispatch is forgotten, so the relay sends it again once due)."""
    if row is None:
        db.execute(sql.TOO_EARLY, {"job_id": values["job_id"], "now": values["now"]})
        return None
    return Claim(
        job_id=values["job_id"],
        kind=row.kind,
        attempt=row.attempts,
        owner=values["owner"],
        serial_key=row.serial_key,
        params=dict(row.params or {}),
    )


def _logged(
    session: Session,
    change: Any,
    logged: Any,
    values: dict[str, Any],
    event: Callable[[Any], tuple[str, str, str]],
) -> Any:
    """A job's conditional UPDATE and its Event (from, to, reason): one statement on
    PostgreSQL (``lease_sql.with_event``), two elsewhere. The UPDATE's row, or None."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(logged, values).first()
    row = session.execute(change, values).first()
    if row is not None:
        from_state, to_state, reason = event(row)
        record_event(
            session,
            workspace_id=row.workspace_id,
            subject_type=JOB.name,
            subject_id=values["job_id"],
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            actor=values["owner"],
            deployment_id=row.deployment_id,
            job_id=values["job_id"],
        )
    return row


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
    values = _finish_values(
        job_id, owner, state, reason, result, failure_reason, failure_diagnostics
    )
    row = _logged(
        session,
        sql.FINISH,
        sql.FINISH_LOGGED,
        values,
        lambda _: ("running", state, reason or state),
    )
    if row is None:  # not running, or no longer held by this owner
        refuse(session, JOB, subject_id=job_id, from_state="running", to_state=state)
    loaded = session.identity_map.get(session.identity_key(Job, job_id))
    if loaded is not None:  # keep an object already in the session in step
        session.refresh(loaded)


def finish_logged(
    conn: Connection,
    *,
    job_id: str,
    owner: str,
    state: str,
    result: dict[str, Any] | None = None,
) -> bool:
    """PostgreSQL: ``finish`` as one statement (``lease_sql.FINISH_LOGGED``) on a Core
    connection in autocommit, for an end that needs nothing else (a success: no
    compensation). False when the job was not running under ``owner`` (nothing written:
    ``finish`` says why)."""
    values = _finish_values(job_id, owner, state, "", result, None, None)
    return conn.execute(sql.FINISH_LOGGED, values).first() is not None


def _finish_values(
    job_id: str,
    owner: str,
    state: str,
    reason: str,
    result: dict[str, Any] | None,
    failure_reason: str | None,
    failure_diagnostics: dict[str, Any] | None,
) -> dict[str, Any]:
    if state not in TERMINAL_JOB_STATES:
        raise ValueError(f"{state} is not terminal")
    return {
        "job_id": job_id,
        "owner": owner,
        "now": utcnow(),
        "to_state": state,
        "to_result": result,
        "to_failure_reason": failure_reason,
        "to_failure_diagnostics": failure_diagnostics,
        "to_reason": reason or state,
    }
