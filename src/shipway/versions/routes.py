"""HTTP routes of versions (seed pages); promote is served with the release routes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader
from shipway.auth.service import Principal
from shipway.catalog.models import Version
from shipway.deployments.service import get_deployment
from shipway.schemas import Page, error_responses
from shipway.versions import service
from shipway.versions.schemas import (
    ReleaseRead,
    VersionFull,
    VersionLifecycle,
    VersionState,
    VersionSummary,
)
from shipway.versions.views import version_full, version_lifecycle

router = APIRouter(tags=["versions"])


def _releases(session: Session, version: Version, environment: str) -> list[ReleaseRead]:
    """The version's releases, once ``environment`` is known to exist."""
    service.check_environment(session, deployment_id=version.deployment_id, environment=environment)
    releases = service.releases_of(session, version_id=version.id)
    return [ReleaseRead.model_validate(r) for r in releases]


@router.get(
    "/deployments/{deployment_id}/versions",
    response_model=Page[VersionSummary],
    responses=error_responses(401, 403, 404, 422),
)
def list_versions(
    deployment_id: str,
    state: VersionState | None = Query(None),
    workspace_id: str | None = Query(None),
    external_workspace_id: str | None = Query(None),
    environment: str | None = Query(None, description="Only versions released to it"),
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> Page[VersionSummary]:
    """A deployment's versions, newest first, with an opaque keyset cursor."""
    with session.begin():
        get_deployment(session, deployment_id=deployment_id, workspace_id=principal.workspace_id)
        rows, next_cursor = service.list_versions(
            session,
            deployment_id=deployment_id,
            state=state,
            workspace_id=workspace_id,
            external_workspace_id=external_workspace_id,
            environment=environment,
            limit=limit,
            cursor=cursor,
        )
        return Page[VersionSummary](
            data=[VersionSummary.model_validate(v) for v in rows], next_cursor=next_cursor
        )


@router.get(
    "/deployments/{deployment_id}/versions/{version_id}",
    response_model=VersionFull,
    responses=error_responses(401, 403, 404),
)
def get_deployment_version(
    deployment_id: str,
    version_id: str,
    environment: str = Query("production", description="Whose lifecycle fields to show"),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> VersionFull:
    """The full version row, its lifecycle in ``environment`` and every release."""
    with session.begin():
        version = service.get_version(
            session,
            version_id=version_id,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
        )
        return version_full(
            version, releases=_releases(session, version, environment), environment=environment
        )


@router.get(
    "/versions/{version_id}",
    response_model=VersionLifecycle,
    responses=error_responses(401, 403, 404),
)
def get_version_lifecycle(
    version_id: str,
    environment: str = Query("production", description="Whose lifecycle fields to show"),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> VersionLifecycle:
    """The seed get-version shape: lifecycle status, replicas, failure and rollback fields."""
    with session.begin():
        version = service.get_version(
            session, version_id=version_id, workspace_id=principal.workspace_id
        )
        releases = _releases(session, version, environment)
        return version_lifecycle(version, releases=releases, environment=environment)
