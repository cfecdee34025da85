"""Publish use case: accept a staged source, create the version and its build job."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from shipway.builds.schemas import PublishForm
from shipway.catalog.models import Version
from shipway.deployments.service import get_deployment
from shipway.errors import InvalidInput
from shipway.jobs import queueing
from shipway.jobs.models import Job
from shipway.sources.store import LocalSourceStore, Staged
from shipway.versions.service import create_version


@dataclass(frozen=True)
class Published:
    """The version created by a publish and the job that builds it."""

    version: Version
    job: Job


def check_source(*, kind: str, staged: Staged) -> None:
    """Refuse sources that cannot build for this deployment kind."""
    if kind == "container" and not staged.unpacked.has("Dockerfile"):
        raise InvalidInput(
            "a container deployment needs a Dockerfile at the root of the archive",
            code="source_invalid",
            files_at_root=sorted(f.path for f in staged.unpacked.files if "/" not in f.path)[:50],
        )


def publish(
    session: Session,
    *,
    workspace_id: str,
    deployment_id: str,
    staged: Staged,
    form: PublishForm,
    store: LocalSourceStore,
    actor: str,
) -> Published:
    """Create the version (``created``), move its source into place and queue its build."""
    deployment = get_deployment(session, deployment_id=deployment_id, workspace_id=workspace_id)
    check_source(kind=deployment.kind, staged=staged)
    version = create_version(
        session,
        deployment=deployment,
        actor=actor,
        source_sha256=staged.sha256,
        external_user_id=form.external_user_id,
        provenance=form.provenance(),
        runtime=form.runtime(),
    )
    version.build_log_uri = f"/api/v1/deployments/{deployment.id}/versions/{version.id}/build-log"
    job = queueing.enqueue(
        session,
        workspace_id=workspace_id,
        kind="publish",
        actor=actor,
        params={
            "promote_to": form.promote_to,
            "source_manifest": staged.unpacked.manifest(),
            "source_bytes": staged.size,
        },
        deployment_id=deployment.id,
        version_id=version.id,
    )
    store.commit(staged, version_id=version.id)
    return Published(version=version, job=job)
