"""Retiring a replaced release: its servers and containers removed, DRAINING → RETIRED.

Right after the drain when the scale-down delay is 0, else by a ``retire`` job
queued on the environment's serial line for after the delay.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shipway.catalog.machines import RELEASE
from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.deployments.addresses import route_key
from shipway.ids import utcnow
from shipway.jobs import lines, queueing
from shipway.jobs.context import JobContext
from shipway.jobs.handlers import handler
from shipway.jobs.models import Job
from shipway.releases.activation import load_rollout, set_replicas
from shipway.releases.replicas import tear_down
from shipway.releases.service import LIVE_STATUSES
from shipway.releases.traffic import remove_from_router
from shipway.runtime import get_runtime
from shipway.states import transition


def retire_release(*, release_id: str, actor: str, job_id: str | None) -> bool:
    """Remove a replaced release's servers and containers; DRAINING → RETIRED.

    A release that became ACTIVE again (warm rollback) is left alone (False).
    """
    from shipway.db import transaction

    with transaction() as session:
        release = session.get(Release, release_id)
        assert release is not None
        status = release.status
        key = route_key(release.deployment_id, release.environment)
    if status in (*LIVE_STATUSES, "DEPLOYING"):
        return False
    remove_from_router(key, release_id)
    tear_down(
        runtime=get_runtime(),
        release_id=release_id,
        stop_timeout_seconds=get_settings().stop_timeout_seconds,
    )
    with transaction() as session:
        release = session.get(Release, release_id, populate_existing=True)
        assert release is not None
        if release.status == "DRAINING":
            transition(
                session,
                RELEASE,
                subject_id=release_id,
                from_state="DRAINING",
                to_state="RETIRED",
                reason="replicas stopped and removed",
                actor=actor,
                job_id=job_id,
                values={"retired_at": utcnow(), "replicas": 0},
            )
        else:
            set_replicas(session, release_id, 0)
    return True


def schedule_retire(ctx: JobContext, release_id: str, delay: float) -> None:
    """Queue the retire of ``release_id`` for ``delay`` seconds from now."""
    with ctx.session() as session, session.begin():
        job, release, _, _ = load_rollout(session, ctx.job_id)
        queueing.enqueue(
            session,
            workspace_id=release.workspace_id,
            kind="retire",
            actor=job.actor,
            params={"release_id": release_id},
            deployment_id=release.deployment_id,
            environment=release.environment,
            release_id=release_id,
            serial_key=lines.serial_key_for(release.deployment_id, release.environment),
            not_before=utcnow() + timedelta(seconds=delay),
        )
    ctx.progress(retire_scheduled_in_seconds=delay, release_id=release_id)


@handler("retire", queue="rollouts")
def run_retire(ctx: JobContext) -> dict[str, Any]:
    """Retire a replaced release after its scale-down delay."""
    with ctx.session() as session:
        job = session.get(Job, ctx.job_id)
        assert job is not None and job.release_id
        release_id = job.release_id
    ctx.phase("retire", release_id=release_id)
    retired = retire_release(release_id=release_id, actor=ctx.owner, job_id=ctx.job_id)
    return {"release_id": release_id, "retired": retired}
