"""Bookkeeping of a rollout: which release serves, and what becomes of the one it replaces.

``activate`` records a switch (the new release ACTIVE, the replaced one DRAINING or
ROLLED_BACK, its version archived when promoted out); a warm rollback switches back
to a DRAINING release whose replicas still run; a fresh release replaces one that
can no longer be reused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shipway.catalog.machines import RELEASE, VERSION
from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.config import get_settings
from shipway.ids import new_id, utcnow
from shipway.jobs.context import JobContext
from shipway.jobs.models import Job
from shipway.releases.replicas import RELEASE_LABEL
from shipway.releases.service import active_release
from shipway.releases.traffic import route_of, servers_of, switch_traffic
from shipway.router.current import get_router
from shipway.runtime import get_runtime
from shipway.states import record_event, transition


def load_rollout(session: Session, job_id: str) -> tuple[Job, Release, Version, Deployment]:
    """The rollout job with its release, version and deployment (fresh from the database)."""
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.release_id and job.version_id
    release = session.get(Release, job.release_id, populate_existing=True)
    version = session.get(Version, job.version_id)
    assert release is not None and version is not None
    deployment = session.get(Deployment, version.deployment_id)
    assert deployment is not None
    return job, release, version, deployment


def set_replicas(session: Session, release_id: str, count: int) -> None:
    """Record how many replicas the release runs."""
    session.execute(
        update(Release).where(Release.id == release_id).values(replicas=count, updated_at=utcnow())
    )


def record_switch(ctx: JobContext, *, warm_replicas: int | None = None) -> None:
    """Record in the database that the job's release now takes the traffic.

    ``warm_replicas``: the switch was a warm rollback to these many running replicas.
    """
    with ctx.session() as session, session.begin():
        job, release, version, _ = load_rollout(session, ctx.job_id)
        previous = active_release(
            session, deployment_id=release.deployment_id, environment=release.environment
        )
        replaced = retire_from_service(session, job=job, previous=previous, new=release)
        values: dict[str, Any]
        if warm_replicas is not None:
            values = {
                "rollback_count": release.rollback_count + 1,
                "last_rollback_at": utcnow(),
                "replicas": warm_replicas,
            }
        else:
            values = {"deployed_at": utcnow()}
            if job.kind == "rollback":
                values |= {
                    "rollback_count": previous_rollbacks(session, release=release) + 1,
                    "last_rollback_at": utcnow(),
                }
        activate(
            session, job=job, release=release, version=version, replaced=replaced, values=values
        )


def retire_from_service(
    session: Session, *, job: Job, previous: Release | None, new: Release
) -> str | None:
    """Move the release that served until now out of ACTIVE; returns its id."""
    if previous is None or previous.id == new.id:
        return None
    now = utcnow()
    rollback = job.kind == "rollback"
    transition(
        session,
        RELEASE,
        subject_id=previous.id,
        from_state=previous.status,
        to_state="ROLLED_BACK" if rollback else "DRAINING",
        reason=("rolled back to" if rollback else "replaced by") + f" release {new.id}",
        actor=job.actor,
        job_id=job.id,
        values={
            "image_expires_at": now + timedelta(hours=get_settings().image_retention_hours),
            **({"rolled_back_at": now} if rollback else {}),
        },
    )
    old_version = session.get(Version, previous.version_id, populate_existing=True)
    promoted_out = previous.version_id != new.version_id  # not a redeploy of the same version
    if old_version is not None and old_version.state == "ready" and promoted_out:
        transition(
            session,
            VERSION,
            subject_id=old_version.id,
            from_state="ready",
            to_state="archived",
            reason=f"promoted out of {previous.environment}",
            actor=job.actor,
            job_id=job.id,
        )
    return previous.id


def activate(
    session: Session,
    *,
    job: Job,
    release: Release,
    version: Version,
    replaced: str | None,
    values: dict[str, Any],
) -> None:
    """The release becomes ACTIVE and its environment's active release."""
    now = utcnow()
    transition(
        session,
        RELEASE,
        subject_id=release.id,
        from_state=release.status,
        to_state="ACTIVE",
        reason="traffic switched" + (" (warm rollback)" if release.status == "DRAINING" else ""),
        actor=job.actor,
        job_id=job.id,
        values={
            **values,
            "image_expires_at": None,
            "failure_reason": None,
            "failure_diagnostics": None,
            "rollout": {**(release.rollout or {}), "replaced_release_id": replaced},
        },
    )
    session.execute(
        update(Environment)
        .where(
            Environment.deployment_id == release.deployment_id,
            Environment.name == release.environment,
        )
        .values(active_release_id=release.id, updated_at=now)
    )
    session.execute(update(Version).where(Version.id == version.id).values(promoted_at=now))


def previous_rollbacks(session: Session, *, release: Release) -> int:
    """The most rollbacks any release of this version in this environment had."""
    count = session.scalar(
        select(func.max(Release.rollback_count)).where(
            Release.version_id == release.version_id,
            Release.environment == release.environment,
        )
    )
    return int(count or 0)


def warm_rollback(ctx: JobContext, release: Release) -> bool:
    """Switch back to a DRAINING release whose replicas still run; False if they are gone."""
    runtime = get_runtime()
    replicas = runtime.replicas({RELEASE_LABEL: release.id})
    if not replicas or not all(r.running for r in replicas):
        return False
    ctx.phase("switch", warm=True, replicas=len(replicas))
    switch_traffic(get_router(), route_of(release), to=servers_of(replicas))
    record_switch(ctx, warm_replicas=len(replicas))
    return True


def fresh_release_for(ctx: JobContext) -> None:
    """Give the job a new DEPLOYING release when its own can no longer be reused."""
    with ctx.session() as session, session.begin():
        job, old, version, _ = load_rollout(session, ctx.job_id)
        release = Release(
            id=new_id("rel"),
            workspace_id=old.workspace_id,
            deployment_id=old.deployment_id,
            version_id=old.version_id,
            environment=old.environment,
            job_id=job.id,
            status="DEPLOYING",
            replicas=0,
            rollback_count=old.rollback_count,
            image_url=version.runtime_image,
            config_version=old.config_version,
            rollout={"strategy": (old.rollout or {}).get("strategy"), "restarted_from": old.id},
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(release)
        session.flush()
        job.release_id = release.id
        record_event(
            session,
            workspace_id=release.workspace_id,
            subject_type="release",
            subject_id=release.id,
            from_state=None,
            to_state="DEPLOYING",
            reason=f"release {old.id} is {old.status}; deploying fresh replicas",
            actor=job.actor,
            deployment_id=release.deployment_id,
            job_id=job.id,
        )
