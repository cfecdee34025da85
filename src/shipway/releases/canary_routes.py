"""HTTP routes of operator control of canary rollouts (``/jobs/{id}/pause`` …)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, writer
from shipway.auth.service import Principal
from shipway.jobs import service as jobs
from shipway.jobs.schemas import JobRead
from shipway.releases.canary_control import Action, control_canary
from shipway.schemas import error_responses

router = APIRouter(tags=["jobs"])


def _control(session: Session, principal: Principal, job_id: str, action: Action) -> JobRead:
    with session.begin():
        job = control_canary(
            session,
            job_id=job_id,
            workspace_id=principal.workspace_id,
            actor=principal.actor,
            action=action,
        )
        data = JobRead.model_validate(job)
        data.queue_position = jobs.queue_position(session, job=job)
        return data


ERRORS = error_responses(401, 403, 404, 409)


@router.post("/jobs/{job_id}/pause", response_model=JobRead, responses=ERRORS)
def pause_canary(
    job_id: str, principal: Principal = Depends(writer), session: Session = Depends(get_session)
) -> JobRead:
    """Hold a canary rollout at its current step (analysis goes on; failures still abort)."""
    return _control(session, principal, job_id, "pause")


@router.post("/jobs/{job_id}/resume", response_model=JobRead, responses=ERRORS)
def resume_canary(
    job_id: str, principal: Principal = Depends(writer), session: Session = Depends(get_session)
) -> JobRead:
    """Let a paused canary rollout go on from where it was held."""
    return _control(session, principal, job_id, "resume")


@router.post("/jobs/{job_id}/promote-now", response_model=JobRead, responses=ERRORS)
def promote_canary_now(
    job_id: str, principal: Principal = Depends(writer), session: Session = Depends(get_session)
) -> JobRead:
    """Skip the remaining canary steps: switch all traffic to the canary now."""
    return _control(session, principal, job_id, "promote_now")


@router.post("/jobs/{job_id}/abort", response_model=JobRead, responses=ERRORS)
def abort_canary(
    job_id: str, principal: Principal = Depends(writer), session: Session = Depends(get_session)
) -> JobRead:
    """Abort a canary: its traffic to 0, its replicas removed, the stable release untouched."""
    return _control(session, principal, job_id, "abort")
