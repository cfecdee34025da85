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

Probe rounds: releases/monitor_rounds.py; verdicts and their recording:
releases/monitor_state.py; auto-rollback: releases/auto_rollback.py.

An environment whose rollout job is running is skipped: the job owns its
releases until it ends. Counters live in ``release.health`` so a relay restart
(or a second relay) continues where the last pass stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.ids import utcnow
from shipway.jobs.dispatch import Queued
from shipway.jobs.periodic import periodic
from shipway.releases.monitor_rounds import Candidate, due, probe_all
from shipway.releases.monitor_state import apply_round, rollout_running
from shipway.releases.replicas import RELEASE_LABEL
from shipway.runtime.base import Runtime

log = logging.getLogger(__name__)


@dataclass
class MonitorReport:
    """What one monitor pass did."""

    probed: int = 0
    skipped: int = 0
    unhealthy: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    rollback_jobs: list[Queued] = field(default_factory=list)


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
        candidates = [c for c in due(session, now=now) if not rollout_running(session, c)]
    if not candidates:
        return report
    find_replicas(runtime or get_runtime(), candidates)
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


def find_replicas(engine: Runtime, candidates: list[Candidate]) -> None:
    """Set each candidate's replicas (by name) from one lookup of every release's.

    A listing and an inspect per container, release after release, took most of a pass
    (about 6 ms a container on a busy 2-CPU machine; bench/curves.py): the engine now
    lists every release's containers once and inspects only those not running.
    """
    found = engine.replicas_by_label(RELEASE_LABEL, [c.release_id for c in candidates])
    for candidate in candidates:
        candidate.replicas = sorted(found[candidate.release_id], key=lambda r: r.name)
