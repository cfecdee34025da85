"""HTTP routes of operator control of canary rollouts (``/jobs/{id}/pause`` …)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from shipway.auth.deps import writer
from shipway.auth.service import Principal
from shipway.jobs.schemas import JobRead
from shipway.jobs.submit import Accepted, submit
from shipway.releases.canary_control import Action, control_canary
from shipway.schemas import error_responses

router = APIRouter(tags=["jobs"])


def _control(principal: Principal, job_id: str, action: Action) -> JSONResponse:
    """Record the operator's request through the one submit path (no job is queued)."""

    def record(session: Session) -> Accepted:
        job = control_canary(
            session,
            job_id=job_id,
            workspace_id=principal.workspace_id,
            actor=principal.actor,
            action=action,
        )
        return Accepted(job=job, enqueued=False)

    submitted = submit(workspace_id=principal.workspace_id, action=record, status=200)
    return JSONResponse(status_code=submitted.status, content=submitted.body)


ERRORS = error_responses(401, 403, 404, 409)


@router.post("/jobs/{job_id}/pause", response_model=JobRead, responses=ERRORS)
def pause_canary(job_id: str, principal: Principal = Depends(writer)) -> JSONResponse:
    """Hold a canary rollout at its current step (analysis goes on; failures still abort)."""
    return _control(principal, job_id, "pause")


@router.post("/jobs/{job_id}/resume", response_model=JobRead, responses=ERRORS)
def resume_canary(job_id: str, principal: Principal = Depends(writer)) -> JSONResponse:
    """Let a paused canary rollout go on from where it was held."""
    return _control(principal, job_id, "resume")


@router.post("/jobs/{job_id}/promote-now", response_model=JobRead, responses=ERRORS)
def promote_canary_now(job_id: str, principal: Principal = Depends(writer)) -> JSONResponse:
    """Skip the remaining canary steps: switch all traffic to the canary now."""
    return _control(principal, job_id, "promote_now")


@router.post("/jobs/{job_id}/abort", response_model=JobRead, responses=ERRORS)
def abort_canary(job_id: str, principal: Principal = Depends(writer)) -> JSONResponse:
    """Abort a canary: its traffic to 0, its replicas removed, the stable release untouched."""
    return _control(principal, job_id, "abort")
