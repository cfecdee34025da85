"""Version use cases: list with keyset paging, get, and record a new version."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.errors import InvalidInput, NotFound
from shipway.ids import new_id, utcnow
from shipway.states import record_event
from shipway.workspaces.models import Workspace

MAX_VERSION_NUMBER = 2**31 - 1  # versions.version_number is a 32-bit INTEGER


def encode_cursor(version_number: int) -> str:
    """Opaque cursor pointing after ``version_number`` (newest-first order)."""
    return base64.urlsafe_b64encode(json.dumps({"n": version_number}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The version number a cursor points after; InvalidInput if it is not ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        number = value["n"]
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError
        if not 0 < number <= MAX_VERSION_NUMBER:  # out of the column's range: not ours
            raise ValueError
        return number
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise InvalidInput(
            "cursor is malformed; pass next_cursor as returned", field="cursor"
        ) from None


def list_versions(
    session: Session,
    *,
    deployment_id: str,
    state: str | None = None,
    workspace_id: str | None = None,
    external_workspace_id: str | None = None,
    environment: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[Sequence[Version], str | None]:
    """A page of a deployment's versions, newest first, and the next cursor."""
    query = select(Version).where(Version.deployment_id == deployment_id)
    if state:
        query = query.where(Version.state == state)
    if workspace_id:
        query = query.where(Version.workspace_id == workspace_id)
    if external_workspace_id:
        query = query.where(Version.external_workspace_id == external_workspace_id)
    if environment:
        query = query.where(
            exists().where(Release.version_id == Version.id, Release.environment == environment)
        )
    if cursor:
        query = query.where(Version.version_number < decode_cursor(cursor))
    rows = session.scalars(query.order_by(Version.version_number.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].version_number) if len(rows) > limit else None
    return page, next_cursor


def get_version(
    session: Session, *, version_id: str, workspace_id: str, deployment_id: str | None = None
) -> Version:
    """One version of the caller's workspace (and of ``deployment_id`` when given)."""
    version = session.get(Version, version_id)
    if (
        version is None
        or version.workspace_id != workspace_id
        or (deployment_id is not None and version.deployment_id != deployment_id)
    ):
        raise NotFound(f"version {version_id} not found", version_id=version_id)
    return version


def releases_of(session: Session, *, version_id: str) -> Sequence[Release]:
    """Every release of a version, newest first."""
    return session.scalars(
        select(Release).where(Release.version_id == version_id).order_by(Release.created_at.desc())
    ).all()


def current_release(releases: Sequence[Release], environment: str) -> Release | None:
    """The newest release of a version in ``environment`` (releases are newest first)."""
    return next((r for r in releases if r.environment == environment), None)


def create_version(
    session: Session,
    *,
    deployment: Deployment,
    actor: str,
    source_sha256: str | None = None,
    external_user_id: str | None = None,
    provenance: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
) -> Version:
    """Record a new version (state ``created``) with the next gapless version_number.

    The counter row is incremented with a single UPDATE, which holds the
    deployment's row lock until commit, so concurrent publishes get distinct,
    gapless numbers (and a rolled-back publish gives its number back).
    """
    number = session.execute(
        update(Deployment)
        .where(Deployment.id == deployment.id)
        .values(latest_version_number=Deployment.latest_version_number + 1)
        .returning(Deployment.latest_version_number)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    workspace = session.get(Workspace, deployment.workspace_id)
    runtime = runtime or {}
    version = Version(
        id=new_id("ver"),
        deployment_id=deployment.id,
        version_number=number,
        kind=deployment.kind,
        state="created",
        source_sha256=source_sha256,
        workspace_id=deployment.workspace_id,
        project_id=deployment.project_id,
        external_workspace_id=workspace.external_workspace_id if workspace else None,
        external_user_id=external_user_id,
        runtime_command=runtime.get("runtime_command", deployment.runtime_command),
        runtime_port=runtime.get("runtime_port", deployment.runtime_port),
        health_check_path=runtime.get("health_check_path", deployment.health_check_path),
        created_at=utcnow(),
        updated_at=utcnow(),
        **(provenance or {}),
    )
    session.add(version)
    session.flush()
    record_event(
        session,
        workspace_id=deployment.workspace_id,
        subject_type="version",
        subject_id=version.id,
        from_state=None,
        to_state="created",
        reason=f"version {number} created",
        actor=actor,
        deployment_id=deployment.id,
    )
    return version


def check_environment(session: Session, *, deployment_id: str, environment: str) -> None:
    """NotFound (``environment_not_found``) unless the deployment has ``environment``: a
    version's lifecycle in an environment that does not exist is an error, not a null."""
    found = session.scalar(
        select(Environment.id).where(
            Environment.deployment_id == deployment_id, Environment.name == environment
        )
    )
    if found is None:
        raise NotFound(
            f"deployment {deployment_id} has no environment {environment!r}",
            code="environment_not_found",
            deployment_id=deployment_id,
            environment=environment,
        )
