"""HTTP routes of versions (seed pages) and promote."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.config import get_settings
from shipway.db import session_factory
from shipway.deployments.schemas import ENV_NAME_PATTERN
from shipway.deployments.service import get_deployment
from shipway.idempotency import service as idempotency
from shipway.jobs import relay
from shipway.jobs import service as jobs
from shipway.jobs.schemas import JobRead
from shipway.releases.service import promote_version
from shipway.releases.strategy import Strategy
from shipway.schemas import Page, error_responses
from shipway.versions import service
from shipway.versions.models import Version
from shipway.versions.schemas import (
    Lifecycle,
    ReleaseRead,
    VersionFull,
    VersionLifecycle,
    VersionState,
    VersionSummary,
)

router = APIRouter(tags=["versions"])


class PromoteRequest(BaseModel):
    """Body of promote: the environment and an optional strategy."""

    model_config = ConfigDict(extra="forbid")

    environment: str = Field(
        default="production", pattern=ENV_NAME_PATTERN, min_length=1, max_length=63
    )
    strategy: Strategy | None = Field(
        default=None,
        description=(
            'Rollout strategy: {"type": "all_at_once"} or {"type": "canary", "steps": [...], '
            '"analysis": {...}} (docs/canary.md); null: the environment policy\'s default, '
            "else all at once"
        ),
    )
    supersede: bool = Field(
        default=False,
        description="Cancel rollouts still queued for this environment (newest wins)",
    )


class PromoteResponse(BaseModel):
    """202 answer of promote: the release being deployed and its job."""

    release: ReleaseRead
    job: JobRead


def _lifecycle(version: Version, releases: list[ReleaseRead], environment: str) -> dict[str, Any]:
    current = next((r for r in releases if r.environment == environment), None)
    if current is None:
        return Lifecycle(
            environment=environment,
            status=None,
            failure_reason=version.failure_reason,
            failure_diagnostics=version.failure_diagnostics,
            updated_at=version.updated_at,
        ).model_dump()
    fields = set(Lifecycle.model_fields) - {"environment"}
    return {"environment": environment, **current.model_dump(include=fields)}


def version_full(version: Version, *, releases: list[ReleaseRead], environment: str) -> VersionFull:
    """The full row of a version with its lifecycle in ``environment``."""
    summary = VersionSummary.model_validate(version).model_dump()
    row = {
        name: getattr(version, name) for name in VersionFull.model_fields if hasattr(version, name)
    }
    return VersionFull.model_validate(
        {
            **row,
            **summary,
            **_lifecycle(version, releases, environment),
            "build_failure_reason": version.failure_reason,
            "build_failure_diagnostics": version.failure_diagnostics,
            "releases": releases,
        }
    )


def _releases(session: Session, version_id: str) -> list[ReleaseRead]:
    return [
        ReleaseRead.model_validate(r) for r in service.releases_of(session, version_id=version_id)
    ]


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
            version, releases=_releases(session, version_id), environment=environment
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
        releases = _releases(session, version_id)
        row = {
            name: getattr(version, name)
            for name in VersionLifecycle.model_fields
            if hasattr(version, name)
        }
        return VersionLifecycle.model_validate(
            {**row, **_lifecycle(version, releases, environment), "releases": releases}
        )


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
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", description="Required; same key + same body replays"
    ),
    principal: Principal = Depends(writer),
) -> JSONResponse:
    """Make a ready (or archived: rollback) version the active one in an environment."""
    key = idempotency.validate_key(idempotency_key)
    request = body or PromoteRequest()
    path = f"/deployments/{deployment_id}/versions/{version_id}/promote"
    created: list[tuple[str, str]] = []

    def action(session: Session) -> tuple[int, dict[str, Any]]:
        result = promote_version(
            session,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
            version_id=version_id,
            environment=request.environment,
            strategy=request.strategy.model_dump(mode="json") if request.strategy else None,
            actor=principal.actor,
            supersede=request.supersede,
        )
        created.append((result.job.id, result.job.queue))
        job = JobRead.model_validate(result.job)
        job.queue_position = jobs.queue_position(session, job=result.job)
        answer = PromoteResponse(release=ReleaseRead.model_validate(result.release), job=job)
        return 202, answer.model_dump(mode="json")

    status, payload = idempotency.run_once(
        session_factory(),
        workspace_id=principal.workspace_id,
        key=key,
        request_fingerprint=idempotency.fingerprint(
            method="POST", path=path, body=request.model_dump(mode="json")
        ),
        ttl=timedelta(hours=get_settings().idempotency_ttl_hours),
        action=action,
    )
    if created:
        background.add_task(relay.dispatch_after_commit, created)
    return JSONResponse(status_code=status, content=payload)
