"""What a probe round means for a release: counters, ACTIVE ⇄ UNHEALTHY, and recording it.

``failure_threshold`` failed rounds in a row make an ACTIVE release UNHEALTHY
(``failure_reason = "unhealthy"`` with the probe evidence); ``success_threshold``
passing rounds make an UNHEALTHY one ACTIVE again. Counters live in
``release.health`` and reset with each activation (epoch) of the release.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shipway.catalog.machines import RELEASE
from shipway.catalog.models import Release
from shipway.deployments.policy import HealthMonitoring
from shipway.jobs import lines
from shipway.jobs.dispatch import Queued
from shipway.releases.auto_rollback import auto_rollback
from shipway.releases.monitor_rounds import Candidate
from shipway.states import transition

ACTOR = "health-monitor"
KEEP_ROUNDS = 5  # failed rounds kept as evidence


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


@dataclass(frozen=True)
class Applied:
    """The outcome of one round on one release."""

    to_state: str | None
    rollback_job: Queued | None


def apply_round(
    session: Session, *, candidate: Candidate, round_: dict[str, Any], now: datetime
) -> Applied | None:
    """Record a round on its release (locked); None if the release moved on meanwhile."""
    release = session.get(
        Release, candidate.release_id, with_for_update=True, populate_existing=True
    )
    if release is None or release.status != candidate.status:
        return None
    if rollout_running(session, candidate, release=release):
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


def rollout_running(
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
