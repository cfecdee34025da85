"""HTTP route of a deployment's audit trail (the events tag; rows from shipway.events)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader
from shipway.auth.service import Principal
from shipway.deployments.service import get_deployment
from shipway.events.schemas import EventRead
from shipway.events.service import list_events
from shipway.schemas import Page, error_responses

router = APIRouter(tags=["events"])


@router.get(
    "/deployments/{deployment_id}/events",
    response_model=Page[EventRead],
    responses=error_responses(401, 403, 404, 422),
)
def deployment_events(
    deployment_id: str,
    cursor: str | None = Query(None, pattern=r"^\d{1,18}$", description="Events after this id"),
    limit: int = Query(100, ge=1, le=500),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> Page[EventRead]:
    """Every audited transition of a deployment, oldest first; poll with next_cursor."""
    with session.begin():
        get_deployment(session, deployment_id=deployment_id, workspace_id=principal.workspace_id)
        rows = list_events(
            session,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
            after_id=int(cursor or 0),
            limit=limit,
        )
        data = [EventRead.model_validate(e) for e in rows]
        return Page[EventRead](data=data, next_cursor=str(data[-1].id) if data else cursor)
