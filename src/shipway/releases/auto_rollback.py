"""Auto-rollback of an UNHEALTHY release (policy ``auto_rollback_on_unhealthy``).

Once per unhealthy episode, an ordinary rollback job to the previous retained
version (actor ``policy:auto_rollback_on_unhealthy``); when nothing is retained
an Event says so and the release stays UNHEALTHY.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shipway.catalog.models import Release, Version
from shipway.errors import Conflict
from shipway.jobs import lines
from shipway.jobs.dispatch import Queued
from shipway.states import record_event

log = logging.getLogger(__name__)

ROLLBACK_ACTOR = "policy:auto_rollback_on_unhealthy"
ROLLOUT_KINDS = ("promote", "rollback")


def auto_rollback(session: Session, *, release: Release, now: datetime) -> Queued | None:
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
    return Queued.of(result.job)


def _set_auto_rollback(session: Session, release: Release, record: dict[str, Any]) -> None:
    health = {**(release.health or {}), "auto_rollback": record}
    session.execute(
        update(Release)
        .where(Release.id == release.id)
        .values(health=health)
        .execution_options(synchronize_session=False)
    )
    session.refresh(release)
