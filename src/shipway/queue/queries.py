"""The indexed queries behind the operator view of the queue (and ``/metrics``).

No query reads the whole job table: each one is an index range starting with the job
state, so it reads only queued rows, running rows, or the last hour's failures, never
the history of finished jobs. Migration 0003 adds the per-workspace indexes;
``tests/test_queue_view.py`` runs ``EXPLAIN`` (PostgreSQL, with sequential scans
disabled so tiny test tables still show the access path) and ``EXPLAIN QUERY PLAN``
(SQLite) on every statement the queue view issues (these, and the few of
:mod:`shipway.queue.view`) and fails if the jobs table is read other than through an
index condition on ``state``.

- queued counts per queue: ``(workspace_id, state, queue, created_at)`` (fleet-wide,
  for /metrics: ``(state, queue, created_at)``);
- oldest due job of each queue: the same index, ``queue = ?``, ``LIMIT 1`` (twice: never
  delayed jobs, and delayed ones now due);
- running jobs: ``state = 'running'``: as many rows as jobs run right now;
- stuck queued jobs and waiting rollouts: queued rows only, sorted in Python (an
  ``ORDER BY created_at`` tempts planners into walking ``(workspace_id, created_at)``,
  i.e. every job the workspace ever had);
- failures: ``(workspace_id, state, finished_at)`` (fleet-wide ``(state, finished_at)``)
  with ``finished_at >= now - 1h``;
- workers (read by :mod:`shipway.queue.view`): ``ix_workers_heartbeat`` with
  ``heartbeat_at >= now - 1h``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.jobs.handlers import QUEUES
from shipway.jobs.models import Job
from shipway.queue.schemas import FailureGroup, QueueStats

FAILURE_WINDOW = timedelta(hours=1)
STUCK_LIMIT = 200


def seconds_between(later: datetime, earlier: datetime | None) -> float:
    """Seconds from ``earlier`` to ``later`` (never negative, 0 without ``earlier``)."""
    return round(max(0.0, (later - earlier).total_seconds()), 3) if earlier else 0.0


def _in_workspace(workspace_id: str | None) -> tuple[Any, ...]:
    return (Job.workspace_id == workspace_id,) if workspace_id is not None else ()


def _due(now: datetime) -> Any:
    return or_(Job.not_before.is_(None), Job.not_before <= now)


def _queued_since(job: Job) -> datetime:
    """When a queued job became claimable: accepted, or its not_before time if later."""
    if job.not_before is not None and job.not_before > job.created_at:
        return job.not_before
    return job.created_at


def queue_stats(
    session: Session, *, now: datetime, workspace_id: str | None = None
) -> list[QueueStats]:
    """Depth, delayed count and oldest due job of each queue (running counts are left 0)."""
    due = _due(now)
    counts = {
        row.queue: row
        for row in session.execute(
            select(
                Job.queue,
                func.sum(case((due, 1), else_=0)).label("depth"),
                func.sum(case((due, 0), else_=1)).label("delayed"),
            )
            .where(*_in_workspace(workspace_id), Job.state == "queued")
            .group_by(Job.queue)
        )
    }
    stats = []
    for name in sorted(set(QUEUES) | set(counts)):
        oldest = _oldest_due(session, now=now, queue=name, workspace_id=workspace_id)
        row = counts.get(name)
        stats.append(
            QueueStats(
                name=name,
                depth=int(row.depth or 0) if row else 0,
                delayed=int(row.delayed or 0) if row else 0,
                running=0,
                oldest_queued_age_seconds=seconds_between(now, _queued_since(oldest))
                if oldest
                else None,
                oldest_job_id=oldest.id if oldest else None,
            )
        )
    return stats


def _oldest_due(
    session: Session, *, now: datetime, queue: str, workspace_id: str | None
) -> Job | None:
    """The queued job of ``queue`` that has been claimable the longest.

    Two ``LIMIT 1`` queries: the oldest job never delayed (by ``created_at``) and the
    delayed job due the longest (by ``not_before``); ordering all of them by
    ``created_at`` alone would pick a long-delayed job that only just became due.
    """
    scope = (*_in_workspace(workspace_id), Job.state == "queued", Job.queue == queue)
    never_delayed = session.scalars(
        select(Job)
        .where(*scope, Job.not_before.is_(None))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    ).first()
    delayed_due = session.scalars(
        select(Job).where(*scope, Job.not_before <= now).order_by(Job.not_before, Job.id).limit(1)
    ).first()
    candidates = [job for job in (never_delayed, delayed_due) if job is not None]
    return min(candidates, key=lambda job: (_queued_since(job), job.id), default=None)


def running_jobs(session: Session, *, workspace_id: str | None = None) -> Sequence[Job]:
    """Every running job (as many as workers run right now)."""
    return session.scalars(
        select(Job)
        .where(*_in_workspace(workspace_id), Job.state == "running")
        .order_by(Job.started_at, Job.id)
    ).all()


def stuck_reason(job: Job, *, now: datetime, stuck_after: timedelta) -> tuple[str, datetime] | None:
    """Why a queued or running job needs attention and since when, or None if it does not."""
    if job.state == "running" and job.lease_expires_at is not None and job.lease_expires_at < now:
        return "lease_expired", job.lease_expires_at
    if job.state in ("queued", "running") and job.deadline_at is not None and job.deadline_at < now:
        return "deadline_passed", job.deadline_at
    if job.state == "queued" and _queued_since(job) + stuck_after < now:
        return "queued_too_long", _queued_since(job) + stuck_after
    return None


def stuck_jobs(
    session: Session,
    *,
    now: datetime,
    running: Sequence[Job],
    workspace_id: str | None = None,
    limit: int | None = STUCK_LIMIT,
) -> list[tuple[Job, str, datetime]]:
    """(job, stuck_reason, since) of the running jobs given and of queued jobs.

    A queued job is stuck once it has been due for longer than ``stuck_after_seconds``
    or is past its deadline. Only queued rows are read, at most ``limit``.
    """
    stuck_after = timedelta(seconds=get_settings().stuck_after_seconds)
    cutoff = now - stuck_after
    queued = session.scalars(
        select(Job)
        .where(
            *_in_workspace(workspace_id),
            Job.state == "queued",
            or_(
                and_(
                    Job.created_at < cutoff,
                    or_(Job.not_before.is_(None), Job.not_before < cutoff),
                ),
                Job.deadline_at < now,
            ),
        )
        .limit(limit)  # no ORDER BY: it would tempt planners to walk (workspace_id, created_at)
    ).all()
    found: list[tuple[Job, str, datetime]] = []
    for job in [*running, *sorted(queued, key=lambda j: (j.created_at, j.id))]:
        verdict = stuck_reason(job, now=now, stuck_after=stuck_after)
        if verdict is not None:
            found.append((job, *verdict))
    return found[:limit]


def recent_failures(
    session: Session, *, now: datetime, workspace_id: str | None = None
) -> list[FailureGroup]:
    """Failed jobs of the last hour grouped by failure_reason: count and the latest one."""
    ranked = (
        select(
            func.coalesce(Job.failure_reason, "unknown").label("reason"),
            Job.id,
            Job.finished_at,
            func.count().over(partition_by=Job.failure_reason).label("n"),
            func.row_number()
            .over(
                partition_by=Job.failure_reason,
                order_by=(Job.finished_at.desc(), Job.id.desc()),
            )
            .label("rank"),
        )
        .where(
            *_in_workspace(workspace_id),
            Job.state == "failed",
            Job.finished_at >= now - FAILURE_WINDOW,
        )
        .subquery()
    )
    rows = session.execute(
        select(ranked.c.reason, ranked.c.id, ranked.c.finished_at, ranked.c.n)
        .where(ranked.c.rank == 1)
        .order_by(ranked.c.n.desc(), ranked.c.reason)
    ).all()
    return [
        FailureGroup(
            failure_reason=row.reason,
            count=int(row.n),
            latest_job_id=row.id,
            latest_finished_at=row.finished_at,
        )
        for row in rows
    ]


def waiting_rollouts(session: Session, *, workspace_id: str) -> Sequence[Job]:
    """Queued jobs that wait in line for a (deployment, environment), oldest first."""
    rows = session.scalars(
        select(Job).where(
            Job.workspace_id == workspace_id, Job.state == "queued", Job.serial_key.isnot(None)
        )
    ).all()
    return sorted(rows, key=lambda job: (job.created_at, job.id))
