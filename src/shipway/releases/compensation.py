"""Failure compensation of promote and rollback: what a rollout that ended early leaves.

Before its switch: the new replicas removed, the release FAILED, and the release
the database says serves gets its traffic back (a worker may have died between
moving traffic in the router and recording the switch). After its switch: the
replaced release's retire that the job never reached is queued.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from shipway.catalog.machines import RELEASE
from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.deployments.addresses import route_key
from shipway.errors import InvalidTransition
from shipway.ids import utcnow
from shipway.jobs import lines, queueing
from shipway.jobs.handlers import compensator
from shipway.jobs.models import Job
from shipway.releases.replicas import tear_down
from shipway.releases.service import active_release
from shipway.releases.traffic import FULL_WEIGHT, release_prefix, remove_from_router
from shipway.router.base import RouterError
from shipway.router.current import router_config
from shipway.runtime import get_runtime
from shipway.states import transition


@compensator("promote")
@compensator("rollback")
def fail_release(
    session: Session, job: Job, reason: str, diagnostics: dict[str, Any] | None
) -> None:
    """A rollout that ended before its switch: remove the new replicas, release FAILED.

    A worker may have died between moving traffic in the router and recording the
    switch in the database: the release the database says serves gets its traffic back.
    """
    if not job.release_id:
        return
    release = session.get(Release, job.release_id, populate_existing=True)
    if release is None:
        return
    key = route_key(release.deployment_id, release.environment)
    owns_router = job.started_at is not None and not _other_rollout_running(session, job)
    if release.status == "DEPLOYING":
        if job.started_at is not None:  # a job that never ran started nothing to clean up
            if owns_router:  # traffic back first: the route must never lack a ready server
                with suppress(RouterError, OSError):
                    restore_serving(session, release=release, key=key)
            with suppress(RouterError, OSError):
                remove_from_router(key, release.id)
            tear_down(runtime=get_runtime(), release_id=release.id, stop_timeout_seconds=0)
        with suppress(InvalidTransition):
            transition(
                session,
                RELEASE,
                subject_id=release.id,
                from_state="DEPLOYING",
                to_state="FAILED",
                reason=reason,
                actor=job.actor,
                job_id=job.id,
                values={
                    "failure_reason": reason,
                    "failure_diagnostics": diagnostics,
                    "replicas": 0,
                },
            )
    if owns_router:
        with suppress(RouterError, OSError):
            restore_serving(session, release=release, key=key)
    if release.status == "ACTIVE":
        _retire_left_behind(session, job=job, release=release)


def _retire_left_behind(session: Session, *, job: Job, release: Release) -> None:
    """The job died after its switch (drain or retire): its replaced release still
    runs, DRAINING, with nothing to retire it; queue the retire the job never reached."""
    replaced_id = (release.rollout or {}).get("replaced_release_id")
    replaced = session.get(Release, replaced_id) if replaced_id else None
    if replaced is None or replaced.status != "DRAINING":
        return
    pending = lines.find_job_id(
        session, kinds=("retire",), release_id=replaced.id, states=("queued", "running")
    )
    if pending is not None:
        return
    queueing.enqueue(
        session,
        workspace_id=replaced.workspace_id,
        kind="retire",
        actor=job.actor,
        params={"release_id": replaced.id},
        deployment_id=replaced.deployment_id,
        environment=replaced.environment,
        release_id=replaced.id,
        serial_key=lines.serial_key_for(replaced.deployment_id, replaced.environment),
        not_before=utcnow() + timedelta(seconds=get_settings().scale_down_delay_seconds),
    )


def _other_rollout_running(session: Session, job: Job) -> bool:
    """Whether another job of the same (deployment, environment) runs (and owns the router)."""
    other = lines.find_job_id(
        session, serial_key=job.serial_key, states=("running",), except_job_id=job.id
    )
    return other is not None


def restore_serving(session: Session, *, release: Release, key: str) -> None:
    """Ready servers = the serving release's servers: undo a switch the database never saw."""
    serving = active_release(
        session, deployment_id=release.deployment_id, environment=release.environment
    )
    router = router_config()
    if serving is None or not router.is_running():
        return
    prefix = release_prefix(serving.id)
    servers = router.servers(key)
    for server in servers:  # traffic back first, so the route never lacks a ready server
        if server.name.startswith(prefix) and server.state != "ready":
            router.ready(key, server.name)
        if server.name.startswith(prefix) and server.weight != FULL_WEIGHT:  # after a canary
            router.set_weight(key, server.name, FULL_WEIGHT)
    for server in servers:
        if not server.name.startswith(prefix) and server.state == "ready":
            router.drain(key, server.name)
