"""Health after ACTIVE: probe every serving release, ACTIVE ⇄ UNHEALTHY, optional auto-rollback.

A pass (run by the relay every ``SHIPWAY_MONITOR_INTERVAL_SECONDS``) takes every
ACTIVE or UNHEALTHY release whose environment policy interval
(``policy.health.interval_seconds``) has elapsed since its last probe round and
probes all its replicas at once (HTTP GET of the health check path on each
replica's host port, ``policy.health.timeout_seconds`` each, concurrently). A
round passes when every replica answers 2xx/3xx; a replica container that is
not running, or a release without replicas, fails it.

``failure_threshold`` failed rounds in a row make an ACTIVE release UNHEALTHY
(``failure_reason = "unhealthy"`` with the probe evidence); ``success_threshold``
passing rounds make an UNHEALTHY one ACTIVE again. With
``auto_rollback_on_unhealthy`` an UNHEALTHY release is rolled back once per
unhealthy episode to the previous retained version by an ordinary rollback job
(actor ``policy:auto_rollback_on_unhealthy``); when nothing is retained an Event
says so and the release stays UNHEALTHY.

An environment whose rollout job is running is skipped: the job owns its
releases until it ends. Counters live in ``release.health`` so a relay restart
(or a second relay) continues where the last pass stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shipway.catalog.machines import RELEASE
from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.config import get_settings
from shipway.deployments.policy import EnvironmentPolicy, HealthMonitoring, parse_policy
from shipway.errors import Conflict
from shipway.ids import utcnow
from shipway.jobs import lines
from shipway.jobs.periodic import periodic
from shipway.releases.health import probe
from shipway.releases.replicas import RELEASE_LABEL
from shipway.runtime.base import Replica, Runtime
from shipway.states import record_event, transition

log = logging.getLogger(__name__)

MONITORED = ("ACTIVE", "UNHEALTHY")
ACTOR = "health-monitor"
ROLLBACK_ACTOR = "policy:auto_rollback_on_unhealthy"
KEEP_ROUNDS = 5  # failed rounds kept as evidence
ROLLOUT_KINDS = ("promote", "rollback")


# --------------------------------------------------------------------------- the state logic


@dataclass(frozen=True)
class Verdict:
    """What one probe round means for a release: its new counters and any transition."""

    health: dict[str, Any]
    to_state: str | None


def epoch_of(release: Release) -> str:
    """Marks one activation of a release (deploy, or warm rollback): counters reset with it."""
    moments = [m for m in (release.deployed_at, release.last_rollback_at) if m is not None]
    return max(moments).isoformat() if moments else ""


def judge(
    *,
    status: str,
    health: dict[str, Any] | None,
    round_: dict[str, Any],
    policy: HealthMonitoring,
    epoch: str,
) -> Verdict:
    """Count a probe round into the release's health and decide ACTIVE ⇄ UNHEALTHY."""
    current = dict(health or {})
    if current.get("epoch") != epoch:
        current = {"epoch": epoch}
    failures = int(current.get("consecutive_failures", 0))
    successes = int(current.get("consecutive_successes", 0))
    recent = list(current.get("recent_failures", []))
    if round_["ok"]:
        successes, failures = successes + 1, 0
    else:
        successes, failures = 0, failures + 1
        recent = [*recent, round_][-KEEP_ROUNDS:]
    to_state = None
    if status == "ACTIVE" and failures >= policy.failure_threshold:
        to_state = "UNHEALTHY"
    elif status == "UNHEALTHY" and successes >= policy.success_threshold:
        to_state = "ACTIVE"
    new = {
        **current,
        "consecutive_failures": failures,
        "consecutive_successes": successes,
        "last_round": round_,
        "recent_failures": [] if to_state == "ACTIVE" else recent,
    }
    if to_state is not None:
        new["auto_rollback"] = None  # a new episode: auto-rollback may act once again
    return Verdict(health=new, to_state=to_state)


# --------------------------------------------------------------------------- probing


@dataclass
class Candidate:
    """A release due for a probe round, with what is needed to probe it."""

    release_id: str
    status: str
    path: str
    policy: EnvironmentPolicy
    replicas: list[Replica] = field(default_factory=list)


def due(session: Session, *, now: datetime) -> list[Candidate]:
    """Serving releases whose probe interval has elapsed."""
    rows = session.execute(
        select(Release, Environment.policy, Deployment.health_check_path, Version.health_check_path)
        .join(Deployment, Deployment.id == Release.deployment_id)
        .join(Version, Version.id == Release.version_id)
        .outerjoin(
            Environment,
            (Environment.deployment_id == Release.deployment_id)
            & (Environment.name == Release.environment),
        )
        .where(Release.status.in_(MONITORED))
        .order_by(Release.health_checked_at.is_not(None), Release.health_checked_at)
    ).all()
    found = []
    for release, raw_policy, deployment_path, version_path in rows:
        policy = parse_policy(raw_policy)
        last = release.health_checked_at
        if last is not None and (now - last).total_seconds() < policy.health.interval_seconds:
            continue
        found.append(
            Candidate(
                release_id=release.id,
                status=release.status,
                path=version_path or deployment_path or "/",
                policy=policy,
            )
        )
    return found


def _probe_replica(replica: Replica, path: str, timeout: float) -> dict[str, Any]:
    if not replica.running or not replica.host_port:
        return {
            "replica": replica.name,
            "ok": False,
            "status_code": None,
            "error": f"container {replica.status}"
            + (f" (exit code {replica.exit_code})" if replica.exit_code is not None else ""),
            "body_excerpt": "",
            "elapsed_ms": 0.0,
        }
    result = probe(f"http://127.0.0.1:{replica.host_port}{path}", timeout_seconds=timeout)
    return {"replica": replica.name, "ok": result.ok, **result.as_evidence()}


def probe_all(
    candidates: list[Candidate], *, now: datetime, max_parallel: int
) -> dict[str, dict[str, Any]]:
    """One round per candidate: every replica probed concurrently; release id → round."""
    tasks = [(candidate, replica) for candidate in candidates for replica in candidate.replicas]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    if tasks:
        with ThreadPoolExecutor(
            max_workers=max(1, min(max_parallel, len(tasks))), thread_name_prefix="probe"
        ) as pool:
            futures = {
                (c.release_id, r.id): pool.submit(
                    _probe_replica, r, c.path, c.policy.health.timeout_seconds
                )
                for c, r in tasks
            }
            results = {key: future.result() for key, future in futures.items()}
    rounds = {}
    for candidate in candidates:
        probes = [results[(candidate.release_id, r.id)] for r in candidate.replicas]
        rounds[candidate.release_id] = {
            "at": now.isoformat(),
            "path": candidate.path,
            "ok": bool(probes) and all(p["ok"] for p in probes),
            "replicas": probes,
            **({} if probes else {"error": "no replica containers found"}),
        }
    return rounds


# --------------------------------------------------------------------------- one pass


@dataclass
class MonitorReport:
    """What one monitor pass did."""

    probed: int = 0
    skipped: int = 0
    unhealthy: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    rollback_jobs: list[tuple[str, str]] = field(default_factory=list)


@periodic("health-monitor", interval=lambda settings: settings.monitor_interval_seconds)
def monitor_once(
    session_maker: Callable[[], Session] | None = None,
    *,
    runtime: Runtime | None = None,
    now: datetime | None = None,
) -> MonitorReport:
    """Probe every due release once and apply the verdicts (each in its own transaction)."""
    from shipway.db import session_factory
    from shipway.jobs.dispatch import dispatch
    from shipway.runtime import get_runtime

    maker = session_maker or session_factory()
    now = now or utcnow()
    report = MonitorReport()
    with maker() as session:
        candidates = [c for c in due(session, now=now) if not _rollout_running(session, c)]
    if not candidates:
        return report
    engine = runtime or get_runtime()
    for candidate in candidates:
        candidate.replicas = sorted(
            engine.replicas({RELEASE_LABEL: candidate.release_id}), key=lambda r: r.name
        )
    rounds = probe_all(candidates, now=now, max_parallel=get_settings().monitor_max_parallel_probes)
    for candidate in candidates:
        with maker() as session, session.begin():
            applied = apply_round(
                session, candidate=candidate, round_=rounds[candidate.release_id], now=now
            )
        if applied is None:
            report.skipped += 1
            continue
        report.probed += 1
        if applied.to_state == "UNHEALTHY":
            report.unhealthy.append(candidate.release_id)
        elif applied.to_state == "ACTIVE":
            report.recovered.append(candidate.release_id)
        if applied.rollback_job is not None:
            report.rollback_jobs.append(applied.rollback_job)
    if report.rollback_jobs:
        dispatch(report.rollback_jobs, session_maker=maker)
    if report.unhealthy or report.recovered or report.rollback_jobs:
        log.info("health monitor: %s", report)
    return report


@dataclass(frozen=True)
class Applied:
    """The outcome of one round on one release."""

    to_state: str | None
    rollback_job: tuple[str, str] | None


def apply_round(
    session: Session, *, candidate: Candidate, round_: dict[str, Any], now: datetime
) -> Applied | None:
    """Record a round on its release (locked); None if the release moved on meanwhile."""
    release = session.get(
        Release, candidate.release_id, with_for_update=True, populate_existing=True
    )
    if release is None or release.status != candidate.status:
        return None
    if _rollout_running(session, candidate, release=release):
        return None
    verdict = judge(
        status=release.status,
        health=release.health,
        round_=round_,
        policy=candidate.policy.health,
        epoch=epoch_of(release),
    )
    values: dict[str, Any] = {"health": verdict.health, "health_checked_at": now}
    if verdict.to_state == "UNHEALTHY":
        diagnostics = unhealthy_diagnostics(verdict.health, candidate)
        transition(
            session,
            RELEASE,
            subject_id=release.id,
            from_state="ACTIVE",
            to_state="UNHEALTHY",
            reason=f"unhealthy: {diagnostics['description']}",
            actor=ACTOR,
            values={
                **values,
                "unhealthy_since": now,
                "failure_reason": "unhealthy",
                "failure_diagnostics": diagnostics,
            },
            data={"rounds": verdict.health["recent_failures"]},
        )
    elif verdict.to_state == "ACTIVE":
        transition(
            session,
            RELEASE,
            subject_id=release.id,
            from_state="UNHEALTHY",
            to_state="ACTIVE",
            reason=(
                f"recovered: {verdict.health['consecutive_successes']} passing probe round(s) "
                f"after {_since(release.unhealthy_since, now)} unhealthy"
            ),
            actor=ACTOR,
            values={
                **values,
                "unhealthy_since": None,
                "recovered_at": now,
                "failure_reason": None,
                "failure_diagnostics": None,
            },
            data={"last_round": round_},
        )
    else:
        session.execute(
            update(Release)
            .where(Release.id == release.id, Release.status == release.status)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    session.refresh(release)
    rollback_job = None
    if (
        release.status == "UNHEALTHY"
        and candidate.policy.auto_rollback_on_unhealthy
        and not (release.health or {}).get("auto_rollback")
    ):
        rollback_job = auto_rollback(session, release=release, now=now)
    return Applied(to_state=verdict.to_state, rollback_job=rollback_job)


def _rollout_running(
    session: Session, candidate: Candidate, *, release: Release | None = None
) -> bool:
    """Whether a rollout job of the release's environment runs (it owns the release now)."""
    if release is None:
        release = session.get(Release, candidate.release_id)
        if release is None:
            return True
    key = lines.serial_key_for(release.deployment_id, release.environment)
    running = lines.find_job_id(
        session, serial_key=key, states=("running",), except_kinds=("retire",)
    )
    return running is not None


def _since(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "a while"
    return f"{(now - moment).total_seconds():.0f}s"


def unhealthy_diagnostics(health: dict[str, Any], candidate: Candidate) -> dict[str, Any]:
    """failure_diagnostics of an UNHEALTHY release: which replicas failed how."""
    last = health.get("last_round") or {}
    failing = [p for p in last.get("replicas", []) if not p.get("ok")]
    if failing:
        first = failing[0]
        answer = (
            f"HTTP {first['status_code']}"
            if first.get("status_code") is not None
            else (first.get("error") or "no answer")
        )
        what = (
            f"{len(failing)} of {len(last.get('replicas', []))} replica(s) failed GET "
            f"{candidate.path} (e.g. {first['replica']}: {answer})"
        )
    else:
        what = last.get("error", "no replica answered")
    policy = candidate.policy.health
    return {
        "title": "Release unhealthy",
        "description": (
            f"{health.get('consecutive_failures')} probe rounds in a row failed "
            f"(failure_threshold {policy.failure_threshold}): {what}."
        ),
        "action": (
            f"Check the app's logs and why GET {candidate.path} fails. The release becomes "
            "ACTIVE again by itself once probes pass; roll back with POST "
            "/api/v1/deployments/{id}/rollback, or set the environment policy's "
            "auto_rollback_on_unhealthy to do it automatically."
        ),
        "evidence": {
            "path": candidate.path,
            "failure_threshold": policy.failure_threshold,
            "interval_seconds": policy.interval_seconds,
            "timeout_seconds": policy.timeout_seconds,
            "rounds": health.get("recent_failures", []),
        },
    }


# --------------------------------------------------------------------------- auto-rollback


def auto_rollback(session: Session, *, release: Release, now: datetime) -> tuple[str, str] | None:
    """Queue a rollback of an UNHEALTHY release's environment (once per episode).

    Returns the (job id, queue) to dispatch after commit, or None when nothing was
    queued: another rollout is already waiting (tried again next round), or no
    earlier version is retained (an Event says so; the release stays UNHEALTHY).
    """
    from shipway.releases import service

    key = lines.serial_key_for(release.deployment_id, release.environment)
    pending = lines.find_job_id(
        session, serial_key=key, states=("queued", "running"), kinds=ROLLOUT_KINDS
    )
    if pending is not None:
        return None  # someone already acts on this environment; look again next round
    evidence = (release.failure_diagnostics or {}).get("evidence", {})
    try:
        with session.begin_nested():
            result = service.rollback(
                session,
                workspace_id=release.workspace_id,
                deployment_id=release.deployment_id,
                environment=release.environment,
                to_version_id=None,
                actor=ROLLBACK_ACTOR,
            )
    except Conflict as refusal:
        record: dict[str, Any] = {
            "at": now.isoformat(),
            "outcome": refusal.code,
            "message": refusal.message,
        }
        _set_auto_rollback(session, release, record)
        record_event(
            session,
            workspace_id=release.workspace_id,
            subject_type="release",
            subject_id=release.id,
            from_state="UNHEALTHY",
            to_state="UNHEALTHY",
            reason=f"auto rollback not possible: {refusal.message}",
            actor=ROLLBACK_ACTOR,
            deployment_id=release.deployment_id,
            data={"outcome": refusal.code, "details": refusal.details, "evidence": evidence},
        )
        log.warning("auto rollback of %s not possible: %s", release.id, refusal.message)
        return None
    target = session.get(Version, result.job.version_id)
    record = {
        "at": now.isoformat(),
        "outcome": "queued",
        "job_id": result.job.id,
        "to_version_id": result.job.version_id,
        "to_version_number": target.version_number if target else None,
    }
    _set_auto_rollback(session, release, record)
    diagnostics = dict(release.failure_diagnostics or {})
    if diagnostics:
        diagnostics["evidence"] = {**diagnostics.get("evidence", {}), "auto_rollback": record}
        session.execute(
            update(Release)
            .where(Release.id == release.id)
            .values(failure_diagnostics=diagnostics)
            .execution_options(synchronize_session=False)
        )
    record_event(
        session,
        workspace_id=release.workspace_id,
        subject_type="release",
        subject_id=release.id,
        from_state="UNHEALTHY",
        to_state="UNHEALTHY",
        reason=(
            f"auto rollback to version {record['to_version_number']} queued: release unhealthy"
        ),
        actor=ROLLBACK_ACTOR,
        deployment_id=release.deployment_id,
        job_id=result.job.id,
        data={"rollback": record, "evidence": evidence},
    )
    return result.job.id, result.job.queue


def _set_auto_rollback(session: Session, release: Release, record: dict[str, Any]) -> None:
    health = {**(release.health or {}), "auto_rollback": record}
    session.execute(
        update(Release)
        .where(Release.id == release.id)
        .values(health=health)
        .execution_options(synchronize_session=False)
    )
    session.refresh(release)
