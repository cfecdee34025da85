"""The rollout job (promote and rollback): phases and their bookkeeping.

This slice moves the database through the lifecycle (switch, drain, retire)
with every transition audited. Starting replicas, health checks and the
router switch plug into the ``scale``/``health_check``/``switch`` phases
(issue: promote and rollback).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shipway.deployments.models import Environment
from shipway.errors import InvalidTransition
from shipway.ids import utcnow
from shipway.jobs.context import JobContext
from shipway.jobs.handlers import compensator, handler
from shipway.jobs.models import Job
from shipway.releases.models import Release
from shipway.releases.service import active_release
from shipway.states import RELEASE, VERSION, transition
from shipway.versions.models import Version


def _load(session: Session, job_id: str) -> tuple[Job, Release, Version]:
    job = session.get(Job, job_id)
    assert job is not None and job.release_id and job.version_id
    release = session.get(Release, job.release_id)
    version = session.get(Version, job.version_id)
    assert release is not None and version is not None
    return job, release, version


def _previous_rollbacks(session: Session, *, release: Release) -> int:
    from sqlalchemy import func, select

    count = session.scalar(
        select(func.max(Release.rollback_count)).where(
            Release.version_id == release.version_id,
            Release.environment == release.environment,
            Release.id != release.id,
        )
    )
    return int(count or 0)


def _switch(session: Session, *, job: Job, release: Release, version: Version) -> str | None:
    """Make ``release`` the active one; returns the id of the release it replaced."""
    now = utcnow()
    is_rollback = job.kind == "rollback"
    previous = active_release(
        session, deployment_id=release.deployment_id, environment=release.environment
    )
    if previous is not None and previous.id != release.id:
        transition(
            session,
            RELEASE,
            subject_id=previous.id,
            from_state=previous.status,
            to_state="ROLLED_BACK" if is_rollback else "DRAINING",
            reason=f"replaced by version {version.version_number}",
            actor=job.actor,
            job_id=job.id,
            values={"rolled_back_at": now} if is_rollback else {},
        )
    values: dict[str, Any] = {"deployed_at": now}
    if is_rollback:
        values |= {
            "rollback_count": _previous_rollbacks(session, release=release) + 1,
            "last_rollback_at": now,
        }
    transition(
        session,
        RELEASE,
        subject_id=release.id,
        from_state="DEPLOYING",
        to_state="ACTIVE",
        reason="traffic switched",
        actor=job.actor,
        job_id=job.id,
        values=values,
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
    replaced = previous.id if previous is not None and previous.id != release.id else None
    session.execute(
        update(Release)
        .where(Release.id == release.id)
        .values(rollout={**(release.rollout or {}), "replaced_release_id": replaced})
    )
    return replaced


def _retire(session: Session, *, job: Job, previous_id: str) -> None:
    previous = session.get(Release, previous_id, populate_existing=True)
    assert previous is not None
    if previous.status == "DRAINING":
        transition(
            session,
            RELEASE,
            subject_id=previous.id,
            from_state="DRAINING",
            to_state="RETIRED",
            reason="drained and retired",
            actor=job.actor,
            job_id=job.id,
            values={"retired_at": utcnow(), "replicas": 0},
        )
    old_version = session.get(Version, previous.version_id, populate_existing=True)
    if old_version is not None and old_version.state == "ready":
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


@handler("promote")
@handler("rollback")
def run_rollout(ctx: JobContext) -> dict[str, Any]:
    """Move a DEPLOYING release to ACTIVE and retire the one it replaces."""
    with ctx.session() as session:
        job, release, version = _load(session, ctx.job_id)
    if release.status == "ACTIVE":  # a retried attempt after the switch committed
        previous_id = (release.rollout or {}).get("replaced_release_id")
    else:
        ctx.phase("switch", release_id=release.id)
        with ctx.session() as session, session.begin():
            job, release, version = _load(session, ctx.job_id)
            previous_id = _switch(session, job=job, release=release, version=version)
    if previous_id:
        ctx.phase("drain", release_id=previous_id)
        ctx.phase("retire", release_id=previous_id)
        with ctx.session() as session, session.begin():
            job, _, _ = _load(session, ctx.job_id)
            _retire(session, job=job, previous_id=previous_id)
    return {"release_id": release.id, "replaced_release_id": previous_id}


@compensator("promote")
@compensator("rollback")
def fail_release(
    session: Session, job: Job, reason: str, diagnostics: dict[str, Any] | None
) -> None:
    """A rollout that ended badly before its switch marks its release FAILED."""
    if not job.release_id:
        return
    with suppress(InvalidTransition):  # already switched or already failed: nothing to undo
        transition(
            session,
            RELEASE,
            subject_id=job.release_id,
            from_state="DEPLOYING",
            to_state="FAILED",
            reason=reason,
            actor=job.actor,
            job_id=job.id,
            values={"failure_reason": reason, "failure_diagnostics": diagnostics, "replicas": 0},
        )
