"""The rollout job (promote and rollback): scale → health check → switch → drain → retire.

Every phase is idempotent: a retried job finds its replicas by name and label,
re-adds router servers (a no-op when present) and continues from the state the
database records. Anything that fails before the switch leaves the previous
release serving, untouched, and removes the new replicas.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shipway.catalog.machines import RELEASE, VERSION
from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.config import get_settings
from shipway.deployments.addresses import route_key
from shipway.errors import InvalidTransition
from shipway.ids import new_id, utcnow
from shipway.jobs import lines, queueing
from shipway.jobs.context import JobContext
from shipway.jobs.handlers import compensator, handler
from shipway.jobs.models import Job
from shipway.releases import canary
from shipway.releases.health import HealthPolicy, wait_until_healthy
from shipway.releases.replicas import RELEASE_LABEL, Target, scale_up, tear_down
from shipway.releases.service import LIVE_STATUSES, active_release
from shipway.router.base import Route, RouterError, Server
from shipway.router.current import get_router, router_config
from shipway.runtime import get_runtime
from shipway.runtime.base import Replica
from shipway.states import record_event, transition

DRAIN_POLL_SECONDS = 0.2
FULL_WEIGHT = 100


def _load(session: Session, job_id: str) -> tuple[Job, Release, Version, Deployment]:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.release_id and job.version_id
    release = session.get(Release, job.release_id, populate_existing=True)
    version = session.get(Version, job.version_id)
    assert release is not None and version is not None
    deployment = session.get(Deployment, version.deployment_id)
    assert deployment is not None
    return job, release, version, deployment


def _set_replicas(session: Session, release_id: str, count: int) -> None:
    session.execute(
        update(Release).where(Release.id == release_id).values(replicas=count, updated_at=utcnow())
    )


@handler("promote", queue="rollouts")
@handler("rollback", queue="rollouts")
def run_rollout(ctx: JobContext) -> dict[str, Any]:
    """Deploy the job's release and make it the active one in its environment."""
    with ctx.session() as session:
        job, release, _, _ = _load(session, ctx.job_id)
    if release.status == "DRAINING" and job.kind == "rollback":
        if _warm_rollback(ctx, release):
            return _after_switch(ctx)
        _fresh_release_for(ctx)  # replicas are gone: roll back with new ones
    elif release.status not in ("DEPLOYING", "ACTIVE"):
        _fresh_release_for(ctx)
    with ctx.session() as session:
        job, release, _, _ = _load(session, ctx.job_id)
    if release.status == "DEPLOYING":
        replicas = _scale_and_check(ctx)
        held = canary.run_canary(ctx, replicas)  # None unless the strategy is a canary
        _switch(ctx, replicas)
        if held is not None:
            canary.complete(held)
    return _after_switch(ctx)


def _scale_and_check(ctx: JobContext) -> list[Replica]:
    runtime = get_runtime()
    with ctx.session() as session:
        _, release, version, deployment = _load(session, ctx.job_id)
        target = Target.of(version=version, deployment=deployment)
        path = version.health_check_path or deployment.health_check_path
        policy = HealthPolicy.from_settings((deployment.settings or {}).get("health"))
    ctx.phase("scale", replicas=target.replicas, image=target.image)
    key = route_key(release.deployment_id, release.environment)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="route") as pool:
        pool.submit(_prepare_route, key)
        replicas = scale_up(
            runtime=runtime, release=release, target=target, retried=ctx.attempt > 1
        )
    with ctx.session() as session, session.begin():
        _set_replicas(session, release.id, sum(r.running for r in replicas))
    ctx.phase("health_check", healthy=0, total=len(replicas), path=path)
    results = wait_until_healthy(
        runtime=runtime,
        replicas=replicas,
        path=path,
        policy=policy,
        checkpoint=ctx.checkpoint,
        report=lambda healthy, total: ctx.progress(healthy=healthy, total=total, path=path),
    )
    ctx.progress(healthy=len(replicas), total=len(replicas), path=path, probes=results)
    return replicas


def _servers(replicas: list[Replica]) -> list[Server]:
    return [
        Server(name=r.name, address="127.0.0.1", port=int(r.host_port or 0), weight=FULL_WEIGHT)
        for r in replicas
    ]


def _route(release: Release) -> str:
    return _ensure_route(route_key(release.deployment_id, release.environment))


def _ensure_route(key: str) -> str:
    get_router().ensure_route(Route(key))
    return key


def _prepare_route(key: str) -> None:
    """Create a new environment's route (an HAProxy reload) while containers start.

    Only on a running HAProxy: one started from this short-lived thread would die
    with it when not daemonised. A failure is raised again by the switch's own
    ensure_route, in its phase; meanwhile a route without servers answers 503.
    """
    if router_config().is_running():
        _ensure_route(key)


def _switch(ctx: JobContext, replicas: list[Replica]) -> None:
    """Send all new traffic to the new replicas, then record the switch in the database."""
    ctx.phase("switch")
    router = get_router()
    with ctx.session() as session:
        job, release, version, _ = _load(session, ctx.job_id)
    key = _route(release)
    new_names = {r.name for r in replicas}
    for server in _servers(replicas):
        router.add_server(key, server)
    for server in router.servers(key):
        if server.name not in new_names and server.state == "ready":
            router.drain(key, server.name)
    with ctx.session() as session, session.begin():
        job, release, version, _ = _load(session, ctx.job_id)
        previous = active_release(
            session, deployment_id=release.deployment_id, environment=release.environment
        )
        replaced = _retire_from_service(session, job=job, previous=previous, new=release)
        values: dict[str, Any] = {"deployed_at": utcnow()}
        if job.kind == "rollback":
            values |= {
                "rollback_count": _previous_rollbacks(session, release=release) + 1,
                "last_rollback_at": utcnow(),
            }
        _activate(
            session, job=job, release=release, version=version, replaced=replaced, values=values
        )


def _retire_from_service(
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


def _activate(
    session: Session,
    *,
    job: Job,
    release: Release,
    version: Version,
    replaced: str | None,
    values: dict[str, Any],
) -> None:
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


def _previous_rollbacks(session: Session, *, release: Release) -> int:
    count = session.scalar(
        select(func.max(Release.rollback_count)).where(
            Release.version_id == release.version_id,
            Release.environment == release.environment,
        )
    )
    return int(count or 0)


def _warm_rollback(ctx: JobContext, release: Release) -> bool:
    """Switch back to a DRAINING release whose replicas still run; False if they are gone."""
    runtime = get_runtime()
    replicas = runtime.replicas({RELEASE_LABEL: release.id})
    if not replicas or not all(r.running for r in replicas):
        return False
    ctx.phase("switch", warm=True, replicas=len(replicas))
    router = get_router()
    key = _route(release)
    names = {r.name for r in replicas}
    for server in _servers(replicas):
        router.add_server(key, server)
    for server in router.servers(key):
        if server.name not in names and server.state == "ready":
            router.drain(key, server.name)
    with ctx.session() as session, session.begin():
        job, release, version, _ = _load(session, ctx.job_id)
        previous = active_release(
            session, deployment_id=release.deployment_id, environment=release.environment
        )
        replaced = _retire_from_service(session, job=job, previous=previous, new=release)
        _activate(
            session,
            job=job,
            release=release,
            version=version,
            replaced=replaced,
            values={
                "rollback_count": release.rollback_count + 1,
                "last_rollback_at": utcnow(),
                "replicas": len(replicas),
            },
        )
    return True


def _fresh_release_for(ctx: JobContext) -> None:
    """Give the job a new DEPLOYING release when its own can no longer be reused."""
    with ctx.session() as session, session.begin():
        job, old, version, _ = _load(session, ctx.job_id)
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


def _after_switch(ctx: JobContext) -> dict[str, Any]:
    """Drain the replaced release, then retire it now or after the scale-down delay."""
    with ctx.session() as session:
        _, release, _, _ = _load(session, ctx.job_id)
    replaced = (release.rollout or {}).get("replaced_release_id")
    result = {"release_id": release.id, "replaced_release_id": replaced}
    if not replaced:
        return result
    key = route_key(release.deployment_id, release.environment)
    ctx.phase("drain", release_id=replaced)
    drained = _drain(key, replaced)
    if not drained["drained"]:
        _record_drain_timeout(ctx, replaced, drained)
    delay = get_settings().scale_down_delay_seconds
    if delay <= 0:
        ctx.phase("retire", release_id=replaced)
        retire_release(release_id=replaced, actor=ctx.owner, job_id=ctx.job_id)
    else:
        _schedule_retire(ctx, replaced, delay)
    return {**result, "drain": drained}


def _drain(key: str, release_id: str) -> dict[str, Any]:
    """Wait until the release's servers have no sessions, or the drain timeout.

    Sessions are counted in old HAProxy workers too: a reload (another route added)
    during the drain leaves in-flight requests there, invisible to the new worker.
    """
    router = get_router()
    timeout = get_settings().drain_timeout_seconds
    prefix = f"sw-{release_id}-"
    started = time.monotonic()
    while True:
        sessions = router.open_sessions(key)
        busy = {name: n for name, n in sessions.items() if name.startswith(prefix) and n}
        waited = round(time.monotonic() - started, 3)
        if not busy:
            return {"drained": True, "waited_seconds": waited}
        if waited >= timeout:
            return {"drained": False, "waited_seconds": waited, "open_sessions": busy}
        time.sleep(DRAIN_POLL_SECONDS)


def _record_drain_timeout(ctx: JobContext, release_id: str, drained: dict[str, Any]) -> None:
    timeout = get_settings().drain_timeout_seconds
    diagnostics = {
        "title": "Drain timed out",
        "description": (
            f"The replaced release still had open requests after {timeout:g} seconds; "
            "they were cut when its replicas stopped."
        ),
        "action": (
            "Shorten long requests (streams, uploads) or raise SHIPWAY_DRAIN_TIMEOUT_SECONDS."
        ),
        "evidence": drained,
    }
    with ctx.session() as session, session.begin():
        release = session.get(Release, release_id)
        assert release is not None
        release.failure_reason = "drain_timeout"
        release.failure_diagnostics = diagnostics
        record_event(
            session,
            workspace_id=release.workspace_id,
            subject_type="release",
            subject_id=release.id,
            from_state=release.status,
            to_state=release.status,
            reason="drain_timeout",
            actor=ctx.owner,
            deployment_id=release.deployment_id,
            job_id=ctx.job_id,
            data=drained,
        )


def _schedule_retire(ctx: JobContext, release_id: str, delay: float) -> None:
    with ctx.session() as session, session.begin():
        job, release, _, _ = _load(session, ctx.job_id)
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
    _remove_from_router(key, release_id)
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
            _set_replicas(session, release_id, 0)
    return True


def _remove_from_router(key: str, release_id: str) -> None:
    router = router_config()
    if not router.is_running():
        return  # its saved state is corrected by the next reconciliation
    prefix = f"sw-{release_id}-"
    with suppress(RouterError):
        for server in router.servers(key):
            if server.name.startswith(prefix):
                with suppress(RouterError):  # one still-busy server must not keep the others
                    router.remove_server(key, server.name)


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
                    _restore_serving(session, release=release, key=key)
            with suppress(RouterError, OSError):
                _remove_from_router(key, release.id)
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
            _restore_serving(session, release=release, key=key)
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


def _restore_serving(session: Session, *, release: Release, key: str) -> None:
    """Ready servers = the serving release's servers: undo a switch the database never saw."""
    serving = active_release(
        session, deployment_id=release.deployment_id, environment=release.environment
    )
    router = router_config()
    if serving is None or not router.is_running():
        return
    prefix = f"sw-{serving.id}-"
    servers = router.servers(key)
    for server in servers:  # traffic back first, so the route never lacks a ready server
        if server.name.startswith(prefix) and server.state != "ready":
            router.ready(key, server.name)
        if server.name.startswith(prefix) and server.weight != FULL_WEIGHT:  # after a canary
            router.set_weight(key, server.name, FULL_WEIGHT)
    for server in servers:
        if not server.name.startswith(prefix) and server.state == "ready":
            router.drain(key, server.name)
