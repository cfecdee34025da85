"""HTTP route of rollback."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, writer
from shipway.auth.service import Principal
from shipway.config import get_settings
from shipway.db import session_factory
from shipway.deployments.schemas import ENV_NAME_PATTERN
from shipway.idempotency import service as idempotency
from shipway.jobs import relay
from shipway.jobs.schemas import JobRead
from shipway.releases import service
from shipway.releases.retention import set_pinned
from shipway.schemas import error_responses
from shipway.versions.routes import PromoteResponse, version_full
from shipway.versions.schemas import ReleaseRead, VersionFull
from shipway.versions.service import get_version, releases_of

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
        background.add_task(relay.dispatch_after_commit, created)
    return JSONResponse(status_code=status, content=payload)


@router.post(
    "/deployments/{deployment_id}/versions/{version_id}/pin",
    response_model=VersionFull,
    responses=error_responses(401, 403, 404),
)
def pin_version(
    deployment_id: str,
    version_id: str,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> VersionFull:
    """Keep this version's image for rollback past the retention window."""
    return _set_pinned(session, principal, deployment_id, version_id, pinned=True)


@router.delete(
    "/deployments/{deployment_id}/versions/{version_id}/pin",
    response_model=VersionFull,
    responses=error_responses(401, 403, 404),
)
def unpin_version(
    deployment_id: str,
    version_id: str,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> VersionFull:
    """Let this version's image expire with its rollback window again."""
    return _set_pinned(session, principal, deployment_id, version_id, pinned=False)


def _set_pinned(
    session: Session, principal: Principal, deployment_id: str, version_id: str, *, pinned: bool
) -> VersionFull:
    with session.begin():
        version = get_version(
            session,
            version_id=version_id,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
        )
        set_pinned(session, version=version, pinned=pinned, actor=principal.actor)
        session.flush()
        releases = [
            ReleaseRead.model_validate(r) for r in releases_of(session, version_id=version_id)
        ]
        return version_full(version, releases=releases, environment="production")


def _include_canary_control() -> None:
    """``/jobs/{id}/pause|resume|promote-now|abort`` (served with the release routes)."""
    from shipway.releases.canary_routes import router as canary_control

    router.include_router(canary_control)


_include_canary_control()
