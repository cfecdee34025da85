"""Operator control of a canary rollout job: pause, resume, promote now, abort.

Each request is recorded on the job (``paused``, ``control_request``) and audited
as an Event with the actor; the running job acts on it at its next tick
(≤ 0.25 s). A queued canary can be paused (it holds at its first step), told to
promote at once, or aborted (cancelled before it starts).
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.orm import Session

from shipway.catalog.models import Release
from shipway.errors import Conflict
from shipway.ids import utcnow
from shipway.jobs import queueing
from shipway.jobs.machine import JOB
from shipway.jobs.models import Job
from shipway.releases.canary import canary_strategy
from shipway.states import record_event, transition

Action = Literal["pause", "resume", "promote_now", "abort"]
ROLLOUT_KINDS = ("promote", "rollback")
FINISHED_CANARY_STATES = ("promoting", "completed", "aborted")


def control_canary(
    session: Session, *, job_id: str, workspace_id: str, actor: str, action: Action
) -> Job:
    """Record an operator's request on a queued or running canary rollout; audited."""
    job = queueing.get_job(session, job_id=job_id, workspace_id=workspace_id)
    canary_state = _check_controllable(session, job)
    if action == "abort" and job.state == "queued":
        return _abort_queued(session, job=job, actor=actor)
    if action == "pause":
        job.paused = True
    elif action == "resume":
        job.paused = False
    else:
        job.control_request = action
        job.paused = False
    job.updated_at = utcnow()
    record_event(
        session,
        workspace_id=job.workspace_id,
        subject_type="canary",
        subject_id=job.release_id or job.id,
        from_state=canary_state,
        to_state=f"{action}_requested",
        reason=f"{action.replace('_', ' ')} requested by {actor}",
        actor=actor,
        deployment_id=job.deployment_id,
        job_id=job.id,
        data={"action": action, "job_state": job.state},
    )
    session.flush()
    session.refresh(job)
    return job


def _check_controllable(session: Session, job: Job) -> str | None:
    """The canary's state; Conflict unless the job is a queued or running canary rollout."""
    if job.kind not in ROLLOUT_KINDS or canary_strategy(job) is None:
        raise Conflict(
            f"job {job.id} is not a canary rollout",
            code="job_not_canary",
            kind=job.kind,
            strategy=(job.params or {}).get("strategy"),
        )
    if job.state not in ("queued", "running"):
        raise Conflict(
            f"job {job.id} already ended ({job.state})", code="job_not_running", state=job.state
        )
    release = session.get(Release, job.release_id) if job.release_id else None
    state = ((release.rollout or {}).get("canary") or {}).get("state") if release else None
    if state in FINISHED_CANARY_STATES:
        raise Conflict(
            f"the canary of job {job.id} is already {state}",
            code="canary_finished",
            canary_state=state,
        )
    return str(state) if state else None


def _abort_queued(session: Session, *, job: Job, actor: str) -> Job:
    from shipway.jobs import handlers

    diagnostics = {
        "title": "Canary aborted before it started",
        "description": f"{actor} aborted this canary rollout while it was queued.",
        "action": "Nothing to undo: the stable release kept serving. Promote again when ready.",
        "evidence": {"actor": actor},
    }
    transition(
        session,
        JOB,
        subject_id=job.id,
        from_state="queued",
        to_state="cancelled",
        reason=f"canary aborted by {actor}",
        actor=actor,
        values={
            "finished_at": utcnow(),
            "control_request": "abort",
            "failure_reason": "canary_aborted",
            "failure_diagnostics": diagnostics,
        },
    )
    handlers.compensate(session, job, "canary_aborted", diagnostics)
    session.flush()
    session.refresh(job)
    return job
