"""Cancelling a job on request: at once while queued, between steps while running."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shipway.errors import Conflict
from shipway.ids import utcnow
from shipway.jobs import handlers
from shipway.jobs.machine import JOB, TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from shipway.jobs.queueing import get_job
from shipway.states import record_event, transition


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
