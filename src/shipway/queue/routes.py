"""HTTP route of the operator queue view."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader
from shipway.auth.service import Principal
from shipway.queue import view
from shipway.queue.schemas import QueueView
from shipway.schemas import error_responses

router = APIRouter(tags=["queue"])


@router.get("/queue", response_model=QueueView, responses=error_responses(401, 403, 503))
def queue_view(
    principal: Principal = Depends(reader), session: Session = Depends(get_session)
) -> QueueView:
    """Queue depth and age, running jobs, workers, stuck jobs, recent failures, rollouts.

    Jobs are those of the caller's workspace. Worker processes are shared by every
    workspace: an ``admin`` token sees each of them (with the current job only if it is
    the workspace's own); a ``deployments:read`` token sees ``workers_summary`` and the
    worker holding each of its running jobs, and ``workers`` is null.
    """
    viewer = view.Viewer(
        workspace_id=principal.workspace_id, sees_workers="admin" in principal.scopes
    )
    with session.begin():
        return view.queue_view(session, viewer=viewer)
