"""HTTP routes of jobs."""

from __future__ import annotations

import base64
from datetime import datetime

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.errors import InvalidInput
from shipway.events.schemas import EventRead
from shipway.events.service import list_events
from shipway.jobs import cancel, queueing
from shipway.jobs.lines import queue_position
from shipway.jobs.models import Job
from shipway.jobs.schemas import JobRead, JobState
from shipway.jobs.submit import Accepted, submit
from shipway.schemas import Page, error_responses

router = APIRouter(tags=["jobs"])


def _read(session: Session, job: Job) -> JobRead:
    data = JobRead.model_validate(job)
    data.queue_position = queue_position(session, job=job)
    return data


def _cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(
            "cursor is malformed; pass next_cursor as returned", field="cursor"
        ) from None


@router.get("/jobs", response_model=Page[JobRead], responses=error_responses(401, 403, 422))
def list_jobs(
    state: JobState | None = Query(None),
    kind: str | None = Query(None, max_length=20),
    deployment_id: str | None = Query(None, max_length=40),
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> Page[JobRead]:
    """Jobs of the caller's workspace, newest first."""
    with session.begin():
        rows = queueing.list_jobs(
            session,
            workspace_id=principal.workspace_id,
            state=state,
            kind=kind,
            deployment_id=deployment_id,
            limit=limit + 1,
            before=_decode(cursor) if cursor else None,
        )
        page = rows[:limit]
        return Page[JobRead](
            data=[_read(session, j) for j in page],
            next_cursor=_cursor(page[-1]) if len(rows) > limit else None,
        )


@router.get("/jobs/{job_id}", response_model=JobRead, responses=error_responses(401, 403, 404))
def get_job(
    job_id: str, principal: Principal = Depends(reader), session: Session = Depends(get_session)
) -> JobRead:
    """One job with its phase, attempts, lease and queue position."""
    with session.begin():
        return _read(
            session, queueing.get_job(session, job_id=job_id, workspace_id=principal.workspace_id)
        )


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobRead,
    responses=error_responses(401, 403, 404, 409),
)
def cancel_job(job_id: str, principal: Principal = Depends(writer)) -> JSONResponse:
    """Cancel a queued job at once, or ask a running one to stop and clean up."""

    def action(session: Session) -> Accepted:
        job = cancel.request_cancel(
            session, job_id=job_id, workspace_id=principal.workspace_id, actor=principal.actor
        )
        return Accepted(job=job, enqueued=False)

    submitted = submit(workspace_id=principal.workspace_id, action=action, status=200)
    return JSONResponse(status_code=submitted.status, content=submitted.body)


@router.get(
    "/jobs/{job_id}/audit",
    response_model=list[EventRead],
    responses=error_responses(401, 403, 404),
)
def job_audit(
    job_id: str,
    after: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=500),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> list[EventRead]:
    """The audited transitions of one job (phases, state changes), oldest first."""
    with session.begin():
        queueing.get_job(session, job_id=job_id, workspace_id=principal.workspace_id)
        rows = list_events(
            session, workspace_id=principal.workspace_id, job_id=job_id, after_id=after, limit=limit
        )
        return [EventRead.model_validate(e) for e in rows]
