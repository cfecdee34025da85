"""HTTP route of rollback."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from shipway.auth.deps import writer
from shipway.auth.service import Principal
from shipway.config import get_settings
from shipway.db import session_factory
from shipway.deployments.schemas import ENV_NAME_PATTERN
from shipway.idempotency import service as idempotency
from shipway.jobs import relay
from shipway.jobs.schemas import JobRead
from shipway.releases import service
from shipway.schemas import error_responses
from shipway.versions.routes import PromoteResponse
from shipway.versions.schemas import ReleaseRead

router = APIRouter(tags=["versions"])


class RollbackRequest(BaseModel):
    """Body of rollback."""

    model_config = ConfigDict(extra="forbid")

    environment: str = Field(
        default="production", pattern=ENV_NAME_PATTERN, min_length=1, max_length=63
    )
    to_version_id: str | None = Field(
        default=None,
        max_length=40,
        description="Default: the most recent archived version still retained here",
    )


@router.post(
    "/deployments/{deployment_id}/rollback",
    status_code=202,
    response_model=PromoteResponse,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def rollback(
    deployment_id: str,
    background: BackgroundTasks,
    body: RollbackRequest | None = Body(None),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", description="Required; same key + same body replays"
    ),
    principal: Principal = Depends(writer),
) -> JSONResponse:
    """Roll an environment back to an archived version's exact retained image (no rebuild)."""
    key = idempotency.validate_key(idempotency_key)
    request = body or RollbackRequest()
    created: list[tuple[str, str]] = []

    def action(session: Session) -> tuple[int, dict[str, Any]]:
        result = service.rollback(
            session,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
            environment=request.environment,
            to_version_id=request.to_version_id,
            actor=principal.actor,
        )
        created.append((result.job.id, result.job.queue))
        answer = PromoteResponse(
            release=ReleaseRead.model_validate(result.release),
            job=JobRead.model_validate(result.job),
        )
        return 202, answer.model_dump(mode="json")

    status, payload = idempotency.run_once(
        session_factory(),
        workspace_id=principal.workspace_id,
        key=key,
        request_fingerprint=idempotency.fingerprint(
            method="POST",
            path=f"/deployments/{deployment_id}/rollback",
            body=request.model_dump(mode="json"),
        ),
        ttl=timedelta(hours=get_settings().idempotency_ttl_hours),
        action=action,
    )
    if created:
        background.add_task(relay.dispatch, created)
    return JSONResponse(status_code=status, content=payload)
