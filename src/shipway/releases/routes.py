"""HTTP routes of promote, rollback and pinning (OpenAPI tag: versions)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, writer
from shipway.auth.service import Principal
from shipway.jobs.submit import Accepted, Idempotent, submit
from shipway.releases import service
from shipway.releases.retention import set_pinned
from shipway.releases.schemas import PromoteRequest, PromoteResponse, RollbackRequest
from shipway.schemas import error_responses
from shipway.versions.schemas import ReleaseRead, VersionFull
from shipway.versions.service import get_version, releases_of
from shipway.versions.views import version_full

router = APIRouter(tags=["versions"])
IDEMPOTENCY_KEY = Header(
    None, alias="Idempotency-Key", description="Required; same key + same body replays"
)


def _answer(result: service.PromoteResult) -> Accepted:
    """The queued rollout job, answered with its release (promote and rollback alike)."""
    release = ReleaseRead.model_validate(result.release)
    return Accepted(job=result.job, answer=lambda job: PromoteResponse(release=release, job=job))


def _promote(
    session: Session,
    *,
    principal: Principal,
    deployment_id: str,
    version_id: str,
    request: PromoteRequest,
) -> Accepted:
    strategy = request.strategy.model_dump(mode="json") if request.strategy else None
    result = service.promote_version(
        session,
        workspace_id=principal.workspace_id,
        deployment_id=deployment_id,
        version_id=version_id,
        environment=request.environment,
        strategy=strategy,
        actor=principal.actor,
        supersede=request.supersede,
        config=request.config.change() if request.config else None,
    )
    return _answer(result)


def _rollback(
    session: Session, *, principal: Principal, deployment_id: str, request: RollbackRequest
) -> Accepted:
    result = service.rollback(
        session,
        workspace_id=principal.workspace_id,
        deployment_id=deployment_id,
        environment=request.environment,
        to_version_id=request.to_version_id,
        actor=principal.actor,
    )
    return _answer(result)


@router.post(
    "/deployments/{deployment_id}/versions/{version_id}/promote",
    status_code=202,
    response_model=PromoteResponse,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def promote(
    deployment_id: str,
    version_id: str,
    background: BackgroundTasks,
    body: PromoteRequest | None = Body(None),
    idempotency_key: str | None = IDEMPOTENCY_KEY,
    principal: Principal = Depends(writer),
) -> JSONResponse:
    """Make a ready (or archived: rollback) version the active one in an environment."""
    request = body or PromoteRequest()
    path = f"/deployments/{deployment_id}/versions/{version_id}/promote"
    submitted = submit(
        workspace_id=principal.workspace_id,
        request=Idempotent.of(idempotency_key, method="POST", path=path, body=request),
        defer=background.add_task,
        action=partial(
            _promote,
            principal=principal,
            deployment_id=deployment_id,
            version_id=version_id,
            request=request,
        ),
    )
    return JSONResponse(status_code=submitted.status, content=submitted.body)


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
    idempotency_key: str | None = IDEMPOTENCY_KEY,
    principal: Principal = Depends(writer),
) -> JSONResponse:
    """Roll an environment back to an archived version's exact retained image (no rebuild)."""
    request = body or RollbackRequest()
    path = f"/deployments/{deployment_id}/rollback"
    submitted = submit(
        workspace_id=principal.workspace_id,
        request=Idempotent.of(idempotency_key, method="POST", path=path, body=request),
        defer=background.add_task,
        action=partial(
            _rollback, principal=principal, deployment_id=deployment_id, request=request
        ),
    )
    return JSONResponse(status_code=submitted.status, content=submitted.body)


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
