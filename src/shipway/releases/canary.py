"""The canary step loop of a rollout job: weights, analysis, operator control, abort.

Runs between the health check of the new (canary) replicas and the full switch.
The canary release stays DEPLOYING and the stable one ACTIVE the whole time
(the one-ACTIVE-per-environment index holds); the traffic split lives in the
router weights and in ``release.rollout["canary"]`` (mirrored in
``job.progress["canary"]``). A failed analysis or an operator abort sets the
canary weight to 0 and the stable weights back, then ends the job; the rollout
compensator removes the canary replicas and marks the release FAILED.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.catalog.models import Release
from shipway.deployments.addresses import route_key
from shipway.deployments.strategy import Canary, parse_strategy
from shipway.ids import utcnow
from shipway.jobs.context import JobCancelled, JobContext, JobFailed
from shipway.jobs.models import Job
from shipway.releases.analysis import (
    Snapshot,
    delta,
    failure_diagnostics,
    interval_result,
    keep_last,
    snapshot,
)
from shipway.releases.service import active_release
from shipway.releases.traffic import (
    release_prefix,
    servers_of,
    set_canary_weight,
    stop_canary_traffic,
)
from shipway.router.base import Route, Server
from shipway.router.current import get_router
from shipway.runtime.base import Replica
from shipway.states import record_event

CONTROL_POLL_SECONDS = 0.25
RUNNING_STATES = ("analysing", "paused")


@dataclass
class CanaryRun:
    """One canary in progress: who is stable, who is canary, and the visible state."""

    ctx: JobContext
    strategy: Canary
    key: str
    release_id: str
    stable_id: str
    deployment_id: str
    workspace_id: str
    actor: str
    canary_servers: list[Server]
    stable_names: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    baseline: tuple[Snapshot, Snapshot] = ({}, {})

    @property
    def failures(self) -> int:
        """Failed intervals so far (in the whole canary)."""
        return sum(a["verdict"] == "fail" for a in self.state["analyses"])


def canary_strategy(job: Job) -> Canary | None:
    """The job's strategy if it is a canary."""
    strategy = parse_strategy((job.params or {}).get("strategy"))
    return strategy if isinstance(strategy, Canary) else None


def run_canary(ctx: JobContext, replicas: list[Replica]) -> CanaryRun | None:
    """Walk the canary steps; returns when the full switch is due (None: not a canary).

    Raises JobFailed (analysis) or JobCancelled (operator abort) after the canary's
    traffic went back to the stable release.
    """
    run = _start(ctx, replicas)
    if run is None:
        return None
    first = int(run.state["step_index"])
    for index in range(first, len(run.strategy.steps)):
        if _hold_step(run, index) == "promote_now":
            break
    _set_state(run, state="promoting", event="promoting", reason="steps done; switching fully")
    return run


def complete(run: CanaryRun) -> None:
    """Record that the full switch happened (state ``completed``)."""
    _set_state(run, state="completed", weight=100, event="completed", reason="canary promoted")


def complete_resumed(ctx: JobContext, release_id: str) -> None:
    """A resumed attempt completed the final switch its lost attempt made: ``completed``."""
    with ctx.session() as session, session.begin():
        release = session.get(Release, release_id, populate_existing=True)
        assert release is not None
        state = dict((release.rollout or {}).get("canary") or {})
        if state.get("state") != "promoting":
            return
        state |= {"state": "completed", "weight": 100}
        release.rollout = {**(release.rollout or {}), "canary": state}
        release.updated_at = utcnow()
        record_event(
            session,
            workspace_id=release.workspace_id,
            subject_type="canary",
            subject_id=release.id,
            from_state=None,
            to_state="completed",
            reason="canary promoted (switch completed by a resumed attempt)",
            actor=ctx.owner,
            deployment_id=release.deployment_id,
            job_id=ctx.job_id,
            data={k: state.get(k) for k in ("state", "step_index", "step_count", "weight")},
        )


# -- set-up ---------------------------------------------------------------------------


def _start(ctx: JobContext, replicas: list[Replica]) -> CanaryRun | None:
    with ctx.session() as session:
        job = session.get(Job, ctx.job_id)
        assert job is not None and job.release_id
        strategy = canary_strategy(job)
        release = session.get(Release, job.release_id, populate_existing=True)
        assert release is not None
        stable = active_release(
            session, deployment_id=release.deployment_id, environment=release.environment
        )
        if strategy is None or stable is None or stable.id == release.id:
            return None  # nothing to compare against: the rollout switches all at once
        previous = dict((release.rollout or {}).get("canary") or {})
    key = route_key(release.deployment_id, release.environment)
    router = get_router()
    router.ensure_route(Route(key))
    stable_names = [
        s.name
        for s in router.servers(key)
        if s.name.startswith(release_prefix(stable.id)) and s.state == "ready"
    ]
    run = CanaryRun(
        ctx=ctx,
        strategy=strategy,
        key=key,
        release_id=release.id,
        stable_id=stable.id,
        deployment_id=release.deployment_id,
        workspace_id=release.workspace_id,
        actor=job.actor,
        canary_servers=servers_of(replicas, weight=0),
        stable_names=stable_names,
    )
    resumed = previous.get("state") in RUNNING_STATES
    run.state = {
        "state": "analysing",
        "step_index": int(previous.get("step_index", 0)) if resumed else 0,
        "step_count": len(strategy.steps),
        "weight": 0,
        "paused": False,
        "stable_release_id": stable.id,
        "last_analysis": previous.get("last_analysis") if resumed else None,
        "analyses": list(previous.get("analyses", [])) if resumed else [],
    }
    ctx.phase("canary", canary=run.state)
    return run


# -- one step ---------------------------------------------------------------------------


def _hold_step(run: CanaryRun, index: int) -> str:
    """Hold step ``index`` for its pause, analysing; "advance" or "promote_now"."""
    step = run.strategy.steps[index]
    rules = run.strategy.analysis
    _apply_weight(run, step.weight)
    _set_state(
        run,
        step_index=index,
        weight=step.weight,
        event="step_started",
        reason=f"step {index + 1}/{len(run.strategy.steps)}: canary at {step.weight}%",
    )
    run.baseline = _snapshots(run)
    held = 0.0
    passes = inconclusive = 0
    last = time.monotonic()
    next_analysis = last + rules.interval_seconds
    while True:
        paused = _control(run)
        if paused == "promote_now":
            return "promote_now"
        now = time.monotonic()
        if not paused:
            held += now - last
        last = now
        if now >= next_analysis:
            verdict = _analyse(run, index, step.weight, paused=bool(paused))
            next_analysis = now + rules.interval_seconds
            passes += verdict == "pass"
            inconclusive = inconclusive + 1 if verdict == "inconclusive" and not paused else 0
            _abort_if_needed(run, inconclusive)
        if not paused and held >= step.pause_seconds and passes:
            return "advance"
        time.sleep(max(0.0, min(CONTROL_POLL_SECONDS, next_analysis - time.monotonic())))


def _control(run: CanaryRun) -> bool | str:
    """Apply operator requests: False (running), True (paused) or "promote_now"."""
    run.ctx.checkpoint()  # lease and cancellation
    with run.ctx.session() as session:
        row = session.execute(
            select(Job.paused, Job.control_request).where(Job.id == run.ctx.job_id)
        ).one()
    if row.control_request == "abort":
        _abort_by_operator(run)
    if row.control_request == "promote_now":
        return "promote_now"
    if bool(row.paused) != run.state["paused"]:
        name = "paused" if row.paused else "analysing"
        _set_state(
            run,
            state=name,
            paused=bool(row.paused),
            event="paused" if row.paused else "resumed",
            reason=f"canary {'paused' if row.paused else 'resumed'} at {run.state['weight']}%",
        )
    return bool(row.paused)


def _analyse(run: CanaryRun, index: int, weight: int, *, paused: bool) -> str:
    before_canary, before_stable = run.baseline
    now_canary, now_stable = run.baseline = _snapshots(run)
    result = interval_result(
        at=utcnow(),
        step_index=index,
        weight=weight,
        canary=delta(before_canary, now_canary),
        stable=delta(before_stable, now_stable),
        rules=run.strategy.analysis,
    )
    if paused:
        result["paused"] = True
    analyses = keep_last(run.state["analyses"], result)
    why = f" ({'; '.join(result['reasons'])})" if result["reasons"] else ""
    _set_state(
        run,
        last_analysis=result,
        analyses=analyses,
        event=f"analysis_{result['verdict']}",
        reason=f"analysis {result['verdict']}: {result['requests']} canary requests, "
        f"{result['errors_5xx']} 5xx{why}",
        data=result,
    )
    return str(result["verdict"])


def _snapshots(run: CanaryRun) -> tuple[Snapshot, Snapshot]:
    stats = get_router().stats(run.key)
    return (
        snapshot(stats, prefix=release_prefix(run.release_id)),
        snapshot(stats, prefix=release_prefix(run.stable_id)),
    )


# -- weights ----------------------------------------------------------------------------


def _apply_weight(run: CanaryRun, percent: int) -> None:
    """Give the canary ``percent`` of new requests (stable servers get the rest)."""
    set_canary_weight(
        get_router(),
        run.key,
        percent=percent,
        stable_names=run.stable_names,
        canary=run.canary_servers,
    )


def _stop_canary_traffic(run: CanaryRun) -> None:
    stop_canary_traffic(
        get_router(), run.key, stable_names=run.stable_names, canary=run.canary_servers
    )


# -- abort ------------------------------------------------------------------------------


def _abort_if_needed(run: CanaryRun, inconclusive_in_a_row: int) -> None:
    rules = run.strategy.analysis
    if run.failures >= rules.failure_limit:
        cause = "thresholds"
    elif rules.max_inconclusive is not None and inconclusive_in_a_row >= rules.max_inconclusive:
        cause = "inconclusive"
    else:
        return
    diagnostics = failure_diagnostics(
        rules=rules,
        analyses=run.state["analyses"],
        cause=cause,  # type: ignore[arg-type]
        release_id=run.release_id,
        stable_release_id=run.stable_id,
    )
    _stop_canary_traffic(run)
    _set_state(run, state="aborted", weight=0, event="aborted", reason=diagnostics["title"])
    raise JobFailed("canary_analysis_failed", diagnostics)


def _abort_by_operator(run: CanaryRun) -> None:
    actor = _control_actor(run) or "operator"
    diagnostics = {
        "title": "Canary aborted by an operator",
        "description": f"{actor} aborted the canary at step {run.state['step_index'] + 1}; "
        "its traffic was set to 0 and its replicas removed.",
        "action": "Nothing to undo: the stable release kept serving. Promote again when ready.",
        "evidence": {
            "actor": actor,
            "step_index": run.state["step_index"],
            "weight": run.state["weight"],
            "last_analysis": run.state["last_analysis"],
        },
    }
    _stop_canary_traffic(run)
    _set_state(run, state="aborted", weight=0, event="aborted", reason=f"aborted by {actor}")
    raise JobCancelled(run.ctx.job_id, reason="canary_aborted", diagnostics=diagnostics)


def _control_actor(run: CanaryRun) -> str | None:
    from shipway.events.models import Event

    with run.ctx.session() as session:
        return session.scalar(
            select(Event.actor)
            .where(Event.job_id == run.ctx.job_id, Event.to_state == "abort_requested")
            .order_by(Event.id.desc())
            .limit(1)
        )


# -- visible state ------------------------------------------------------------------------


def _set_state(
    run: CanaryRun,
    *,
    event: str | None = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> None:
    """Update the canary dict on the release and the job (and append an Event)."""
    run.state = {**run.state, **changes}
    run.ctx.sticky["canary"] = run.state
    with run.ctx.session() as session, session.begin():
        release = session.get(Release, run.release_id, populate_existing=True)
        assert release is not None
        release.rollout = {**(release.rollout or {}), "canary": run.state}
        release.updated_at = utcnow()
        if event is not None:
            _event(session, run, event, reason, data)
    run.ctx.progress()


def _event(
    session: Session, run: CanaryRun, name: str, reason: str, data: dict[str, Any] | None
) -> None:
    record_event(
        session,
        workspace_id=run.workspace_id,
        subject_type="canary",
        subject_id=run.release_id,
        from_state=None,
        to_state=name,
        reason=reason,
        actor=run.ctx.owner,
        deployment_id=run.deployment_id,
        job_id=run.ctx.job_id,
        data=data
        or {k: run.state[k] for k in ("state", "step_index", "step_count", "weight", "paused")},
    )
