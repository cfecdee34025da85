"""The rollout job (promote and rollback): scale → health check → switch → drain → retire.

Every phase is idempotent: a retried job finds its replicas by name and label,
re-adds router servers (a no-op when present) and continues from the state the
database records; first of all it settles a switch its lost attempt left half-recorded
(releases/switch_recovery.py). Anything that fails before the switch leaves the previous
release serving, untouched, and removes the new replicas (releases/compensation.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.deployments.addresses import route_key
from shipway.jobs.context import JobContext, JobFailed
from shipway.jobs.handlers import handler
from shipway.releases import canary
from shipway.releases.activation import (
    fresh_release_for,
    load_rollout,
    record_switch,
    set_replicas,
    warm_rollback,
)
from shipway.releases.config_failure import ConfigContext
from shipway.releases.config_release import settle_config
from shipway.releases.health import HealthPolicy, wait_until_healthy
from shipway.releases.replicas import Target, scale_up
from shipway.releases.retire import retire_release, schedule_retire
from shipway.releases.switch_recovery import resume_switch
from shipway.releases.traffic import drain, prepare_route, route_of, servers_of, switch_traffic
from shipway.router.current import get_router
from shipway.runtime import get_runtime
from shipway.runtime.base import Replica
from shipway.states import record_event


@handler("promote", queue="rollouts")
@handler("rollback", queue="rollouts")
def run_rollout(ctx: JobContext) -> dict[str, Any]:
    """Deploy the job's release and make it the active one in its environment."""
    if ctx.attempt > 1 and resume_switch(ctx):  # router and database agree before anything
        return _after_switch(ctx)
    with ctx.session() as session:
        job, release, _, _ = load_rollout(session, ctx.job_id)
    if release.status == "DRAINING" and job.kind == "rollback":
        if warm_rollback(ctx, release):
            return _after_switch(ctx)
        fresh_release_for(ctx)  # replicas are gone: roll back with new ones
    elif release.status not in ("DEPLOYING", "ACTIVE"):
        fresh_release_for(ctx)
    with ctx.session() as session:
        job, release, _, _ = load_rollout(session, ctx.job_id)
    if release.status == "DEPLOYING":
        settle_config(ctx)
        replicas = _scale_and_check(ctx)
        held = canary.run_canary(ctx, replicas)  # None unless the strategy is a canary
        _switch(ctx, replicas)
        if held is not None:
            canary.complete(held)
    return _after_switch(ctx)


def _scale_and_check(ctx: JobContext) -> list[Replica]:
    """Start the release's replicas with its config and wait until they are healthy.

    A failure is recorded with the config's secret values redacted, and as
    ``config_rejected`` when only the config differs from the serving release.
    """
    with ctx.session() as session:
        _, release, version, _ = load_rollout(session, ctx.job_id)
        config = ConfigContext.of(session, release=release)
    try:
        return _start_and_probe(ctx, config)
    except JobFailed as failed:
        raise config.explain(failed, version) from None


def _start_and_probe(ctx: JobContext, config: ConfigContext) -> list[Replica]:
    runtime = get_runtime()
    with ctx.session() as session:
        _, release, version, deployment = load_rollout(session, ctx.job_id)
        target = Target.of(version=version, deployment=deployment, env=config.env)
        path = version.health_check_path or deployment.health_check_path
        policy = HealthPolicy.from_settings((deployment.settings or {}).get("health"))
    ctx.phase("scale", replicas=target.replicas, image=target.image, config=config.version)
    key = route_key(release.deployment_id, release.environment)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="route") as pool:
        pool.submit(prepare_route, key)
        replicas = scale_up(
            runtime=runtime, release=release, target=target, retried=ctx.attempt > 1
        )
    with ctx.session() as session, session.begin():
        set_replicas(session, release.id, sum(r.running for r in replicas))
    ctx.phase("health_check", healthy=0, total=len(replicas), path=path)
    results = wait_until_healthy(
        runtime=runtime,
        replicas=replicas,
        path=path,
        policy=policy,
        checkpoint=ctx.checkpoint,
        report=lambda healthy, total: ctx.progress(healthy=healthy, total=total, path=path),
    )
    ctx.progress(
        healthy=len(replicas), total=len(replicas), path=path, probes=config.clean(results)
    )
    return replicas


def _switch(ctx: JobContext, replicas: list[Replica]) -> None:
    """Send all new traffic to the new replicas, then record the switch in the database.

    After a canary this is its final promotion: full weight to the canary's servers,
    the stable ones drained.
    """
    with ctx.session() as session:
        _, release, _, _ = load_rollout(session, ctx.job_id)
    # The release is read before the phase: between the phase's commit and the switch's own
    # transaction only the router is touched. A crash there leaves a switch made but not
    # recorded (switch_recovery settles it); on SQLite the switch's transaction is the
    # first to wait for the database lock (tests/e2e/test_switch_recovery_sqlite.py).
    ctx.phase("switch")
    switch_traffic(get_router(), route_of(release), to=servers_of(replicas))
    record_switch(ctx)


def _after_switch(ctx: JobContext) -> dict[str, Any]:
    """Drain the replaced release, then retire it now or after the scale-down delay."""
    with ctx.session() as session:
        _, release, _, _ = load_rollout(session, ctx.job_id)
    replaced = (release.rollout or {}).get("replaced_release_id")
    result = {"release_id": release.id, "replaced_release_id": replaced}
    if not replaced:
        return result
    key = route_key(release.deployment_id, release.environment)
    ctx.phase("drain", release_id=replaced)
    drained = drain(key, replaced)
    if not drained["drained"]:
        _record_drain_timeout(ctx, replaced, drained)
    delay = get_settings().scale_down_delay_seconds
    if delay <= 0:
        ctx.phase("retire", release_id=replaced)
        retire_release(release_id=replaced, actor=ctx.owner, job_id=ctx.job_id)
    else:
        schedule_retire(ctx, replaced, delay)
    return {**result, "drain": drained}


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
