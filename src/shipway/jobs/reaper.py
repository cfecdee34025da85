"""The reaper: requeue or fail jobs whose worker stopped renewing their lease."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.errors import InvalidTransition
from shipway.ids import utcnow
from shipway.jobs import handlers
from shipway.jobs.machine import JOB
from shipway.jobs.models import Job
from shipway.states import transition


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


def reap(
    session: Session,
    *,
    job: Job,
    now: datetime,
    actor: str = "reaper",
    owner_known_dead: bool = False,
) -> str | None:
    """Requeue or fail one job whose lease expired; returns the new state or None if it moved.

    ``owner_known_dead``: its worker is known to have exited (``shipway up`` saw it), so
    the job is taken back at once instead of after its lease expires.
    """

    retry = job.attempts < job.max_attempts
    target = "queued" if retry else "failed"
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
    lost = "exited" if owner_known_dead else "lease expired"
    if retry:
        values |= {"dispatched_at": None}
        reason = f"worker_lost: {job.lease_owner} {lost}; retrying"
    else:
        values |= {
            "finished_at": now,
            "failure_reason": "worker_lost",
            "failure_diagnostics": worker_lost_diagnostics(job),
        }
        reason = f"worker_lost: {lost} and attempts are exhausted"
    still_held = (Job.lease_owner == job.lease_owner,)
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
            where=still_held if owner_known_dead else (Job.lease_expires_at < now, *still_held),
        )
    except InvalidTransition:
        return None
    return target


def deadline_passed_queued(session: Session, *, now: datetime, limit: int = 100) -> Sequence[Job]:
    """Queued jobs whose deadline passed before any worker finished them."""
    return session.scalars(
        select(Job).where(Job.state == "queued", Job.deadline_at < now).limit(limit)
    ).all()


@dataclass
class ReapReport:
    """What one reaper pass did."""

    requeued: int = 0
    failed: int = 0


def reap_once(session_maker: Callable[[], Session]) -> ReapReport:
    """Requeue or fail jobs whose lease expired; fail queued jobs past their deadline."""
    report = ReapReport()
    now = utcnow()
    with session_maker() as session:
        expired = expired_leases(session, now=now)
        overdue = deadline_passed_queued(session, now=now)
    for job in expired:
        _reap_one(session_maker, job=job, now=now, report=report)
    for job in overdue:
        try:
            with session_maker() as session, session.begin():
                _fail_overdue(session, job, now)
                report.failed += 1
        except InvalidTransition:
            continue
    return report


def reap_jobs_of_dead_workers(
    session_maker: Callable[[], Session], *, is_dead: Callable[[str | None], bool]
) -> ReapReport:
    """Take back at once the running jobs whose lease owner ``is_dead`` says has exited
    (requeued, or failed with worker_lost once out of attempts), not after lease expiry."""
    report = ReapReport()
    now = utcnow()
    with session_maker() as session:
        running = session.scalars(select(Job).where(Job.state == "running")).all()
    for job in running:
        if is_dead(job.lease_owner):
            _reap_one(session_maker, job=job, now=now, report=report, owner_known_dead=True)
    return report


def _reap_one(
    session_maker: Callable[[], Session],
    *,
    job: Job,
    now: datetime,
    report: ReapReport,
    owner_known_dead: bool = False,
) -> None:
    with session_maker() as session, session.begin():
        outcome = reap(session, job=job, now=now, owner_known_dead=owner_known_dead)
        if outcome == "failed":
            fresh = session.get(Job, job.id)
            assert fresh is not None
            handlers.compensate(session, fresh, "worker_lost", fresh.failure_diagnostics)
    report.requeued += outcome == "queued"
    report.failed += outcome == "failed"


def _fail_overdue(session: Session, job: Job, now: datetime) -> None:
    diagnostics = {
        "title": "Deadline passed while queued",
        "description": "No worker finished this job before its deadline.",
        "action": "Check that workers are running for the job's queue (GET /api/v1/queue).",
        "evidence": {"queue": job.queue, "deadline_at": str(job.deadline_at)},
    }
    transition(
        session,
        JOB,
        subject_id=job.id,
        from_state="queued",
        to_state="failed",
        reason="deadline_exceeded",
        actor="reaper",
        values={
            "finished_at": now,
            "failure_reason": "deadline_exceeded",
            "failure_diagnostics": diagnostics,
        },
    )
    handlers.compensate(session, job, "deadline_exceeded", diagnostics)
