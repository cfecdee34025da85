"""A rollout that dies after its switch still gets the release it replaced retired."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shipway.ids import new_id, utcnow
from tests.conftest import VersionFactory


def _release(deployment_id: str, version_id: str, status: str, **rollout: Any) -> str:
    from shipway.catalog.models import Deployment, Release
    from shipway.db import transaction

    with transaction() as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        release = Release(
            id=new_id("rel"),
            workspace_id=deployment.workspace_id,
            deployment_id=deployment_id,
            version_id=version_id,
            environment="production",
            status=status,
            replicas=1,
            rollback_count=0,
            deployed_at=utcnow(),
            rollout=rollout,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(release)
        return release.id


def _failed_promote(deployment_id: str, release_id: str) -> str:
    from shipway import jobs
    from shipway.catalog.models import Release
    from shipway.db import transaction

    with transaction() as session:
        release = session.get(Release, release_id)
        assert release is not None
        job = jobs.queueing.enqueue(
            session,
            workspace_id=release.workspace_id,
            kind="promote",
            actor="test",
            params={},
            deployment_id=deployment_id,
            environment="production",
            version_id=release.version_id,
            release_id=release_id,
            serial_key=jobs.lines.serial_key_for(deployment_id, "production"),
        )
        return job.id


def _retire_jobs(release_id: str) -> list[tuple[str, str]]:
    from shipway.db import transaction
    from shipway.jobs.models import Job

    with transaction() as session:
        rows = session.execute(
            select(Job.state, Job.actor).where(Job.kind == "retire", Job.release_id == release_id)
        ).all()
        return [(state, actor) for state, actor in rows]


def _compensate(job_id: str) -> None:
    from shipway.db import transaction
    from shipway.jobs.models import Job
    from shipway.releases.compensation import fail_release

    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        fail_release(session, job, "worker_lost", {"title": "Worker lost"})


def test_worker_lost_after_the_switch_queues_the_retire_of_the_replaced_release(
    deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    old_version = make_version(deployment["id"], "archived")
    new_version = make_version(deployment["id"], "ready")
    draining = _release(deployment["id"], old_version, "DRAINING")
    active = _release(deployment["id"], new_version, "ACTIVE", replaced_release_id=draining)
    job_id = _failed_promote(deployment["id"], active)

    _compensate(job_id)
    assert _retire_jobs(draining) == [("queued", "test")]
    _compensate(job_id)  # a second compensation queues nothing more
    assert _retire_jobs(draining) == [("queued", "test")]


def test_a_release_already_retired_needs_no_retire_job(
    deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    old_version = make_version(deployment["id"], "archived")
    new_version = make_version(deployment["id"], "ready")
    retired = _release(deployment["id"], old_version, "RETIRED")
    active = _release(deployment["id"], new_version, "ACTIVE", replaced_release_id=retired)
    _compensate(_failed_promote(deployment["id"], active))
    assert _retire_jobs(retired) == []
