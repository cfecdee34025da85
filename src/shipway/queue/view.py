"""The operator view of a workspace's queue, assembled from :mod:`shipway.queue.queries`.

Besides those queries, it reads the workers seen in the last hour (through
``ix_workers_heartbeat``) and, for admins, which of their current jobs belong to the
workspace (by primary key).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.domains.schemas import CertificateAttention, CertificateRead
from shipway.domains.tls import needing_attention
from shipway.ids import utcnow
from shipway.jobs.models import Job
from shipway.queue.queries import (
    queue_stats,
    recent_failures,
    running_jobs,
    seconds_between,
    stuck_jobs,
    waiting_rollouts,
)
from shipway.queue.schemas import (
    QueueView,
    RolloutJob,
    RolloutLine,
    RunningGroup,
    RunningJob,
    StorageRead,
    StuckJob,
    SupervisedWorkerRead,
    WorkerRead,
    WorkerRef,
    WorkersSummary,
)
from shipway.storage import data_dir_space
from shipway.workers_registry import service as registry
from shipway.workers_registry.models import Worker
from shipway.workers_registry.supervision import supervised_workers

WORKERS_SHOWN_FOR = timedelta(hours=1)


def _rollout_lines(
    running: Sequence[Job], waiting: Sequence[Job], *, now: datetime
) -> list[RolloutLine]:
    lines: dict[str, RolloutLine] = {}

    def line(job: Job) -> RolloutLine:
        assert job.serial_key is not None
        if job.serial_key not in lines:
            lines[job.serial_key] = RolloutLine(
                deployment_id=job.deployment_id,
                environment=job.environment,
                serial_key=job.serial_key,
                running=None,
                waiting=[],
            )
        return lines[job.serial_key]

    def item(job: Job, position: int | None) -> RolloutJob:
        return RolloutJob(
            id=job.id,
            kind=job.kind,
            state=job.state,
            version_id=job.version_id,
            release_id=job.release_id,
            position=position,
            not_before=job.not_before,
            created_at=job.created_at,
            age_seconds=seconds_between(now, job.created_at),
        )

    for job in running:
        if job.serial_key is not None:
            line(job).running = item(job, None)
    due_ahead: dict[str, int] = defaultdict(int)
    for job in waiting:  # oldest first; as jobs.lines.queue_position counts
        target = line(job)
        position = (1 if target.running else 0) + due_ahead[target.serial_key] + 1
        target.waiting.append(item(job, position))
        if job.not_before is None or job.not_before <= now:
            due_ahead[target.serial_key] += 1  # a delayed job blocks no one until it is due
    return sorted(lines.values(), key=lambda x: (x.deployment_id or "", x.environment or ""))


def _supervised() -> list[SupervisedWorkerRead] | None:
    workers = supervised_workers()
    if workers is None:
        return None
    return [SupervisedWorkerRead.model_validate(w, from_attributes=True) for w in workers]


def _worker_ref(worker: Worker | None, *, now: datetime) -> WorkerRef | None:
    if worker is None:
        return None
    return WorkerRef(
        id=worker.id,
        hostname=worker.hostname,
        pid=worker.pid,
        heartbeat_age_seconds=seconds_between(now, worker.heartbeat_at),
        alive=registry.is_alive(worker, now=now),
    )


def _running_groups(
    running: Sequence[Job], workers: Sequence[Worker], *, now: datetime
) -> list[RunningGroup]:
    groups: dict[tuple[str, str | None], list[RunningJob]] = defaultdict(list)
    for job in running:
        groups[(job.kind, job.phase)].append(
            RunningJob(
                id=job.id,
                kind=job.kind,
                queue=job.queue,
                phase=job.phase,
                attempt=job.attempts,
                elapsed_seconds=seconds_between(now, job.started_at),
                started_at=job.started_at,
                heartbeat_at=job.heartbeat_at,
                lease_owner=job.lease_owner,
                deployment_id=job.deployment_id,
                environment=job.environment,
                progress=job.progress or {},
                worker=_worker_ref(registry.worker_for_owner(workers, job.lease_owner), now=now),
            )
        )
    return [
        RunningGroup(kind=kind, phase=phase, count=len(jobs), jobs=jobs)
        for (kind, phase), jobs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]


def _workers_read(
    session: Session, workers: Sequence[Worker], *, now: datetime, workspace_id: str
) -> list[WorkerRead]:
    current = {w.current_job_id for w in workers if w.current_job_id}
    ours = (
        set(
            session.scalars(
                select(Job.id).where(Job.id.in_(current), Job.workspace_id == workspace_id)
            )
        )
        if current
        else set()
    )
    rows = [
        WorkerRead(
            id=w.id,
            hostname=w.hostname,
            pid=w.pid,
            node=w.node,
            queues=list(w.queues or []),
            started_at=w.started_at,
            heartbeat_at=w.heartbeat_at,
            heartbeat_age_seconds=seconds_between(now, w.heartbeat_at),
            alive=registry.is_alive(w, now=now),
            busy=w.current_job_id is not None,
            current_job_id=w.current_job_id if w.current_job_id in ours else None,
            stopped_at=w.stopped_at,
        )
        for w in workers
    ]
    return sorted(rows, key=lambda w: (not w.alive, w.hostname, w.pid, w.id))


@dataclass(frozen=True)
class Viewer:
    """Who looks at the queue: their workspace, and whether they may see every worker."""

    workspace_id: str
    sees_workers: bool


def queue_view(session: Session, *, viewer: Viewer, now: datetime | None = None) -> QueueView:
    """The operator view of ``viewer``'s workspace (workers in full for admins only)."""
    now = now or utcnow()
    workspace_id = viewer.workspace_id
    queues = queue_stats(session, now=now, workspace_id=workspace_id)
    running = running_jobs(session, workspace_id=workspace_id)
    for stats in queues:
        stats.running = sum(1 for job in running if job.queue == stats.name)
    workers = registry.recent_workers(session, since=now - WORKERS_SHOWN_FOR)
    alive = sum(1 for w in workers if registry.is_alive(w, now=now))
    stuck = [
        StuckJob(
            id=job.id,
            kind=job.kind,
            queue=job.queue,
            state=job.state,
            phase=job.phase,
            stuck_reason=reason,
            stuck_since=since,
            stuck_for_seconds=seconds_between(now, since),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            lease_owner=job.lease_owner,
            deployment_id=job.deployment_id,
            environment=job.environment,
        )
        for job, reason, since in stuck_jobs(
            session, now=now, running=running, workspace_id=workspace_id
        )
    ]
    return QueueView(
        generated_at=now,
        workspace_id=workspace_id,
        stuck_after_seconds=get_settings().stuck_after_seconds,
        queues=queues,
        running=_running_groups(running, workers, now=now),
        workers=(
            _workers_read(session, workers, now=now, workspace_id=workspace_id)
            if viewer.sees_workers
            else None
        ),
        workers_summary=WorkersSummary(
            alive=alive,
            dead=len(workers) - alive,
            alive_after_seconds=registry.alive_window().total_seconds(),
            supervised=_supervised(),
        ),
        stuck=stuck,
        failures_last_hour=recent_failures(session, now=now, workspace_id=workspace_id),
        rollouts=_rollout_lines(
            running, waiting_rollouts(session, workspace_id=workspace_id), now=now
        ),
        certificates=_certificates(session, workspace_id=workspace_id, now=now),
        storage=StorageRead.model_validate(data_dir_space()),
    )


def _certificates(
    session: Session, *, workspace_id: str, now: datetime
) -> list[CertificateAttention]:
    return [
        CertificateAttention(
            hostname=domain.hostname,
            deployment_id=domain.deployment_id,
            environment=environment,
            why="failing" if certificate.failure_reason else "expiring",
            certificate=CertificateRead.model_validate(certificate),
        )
        for certificate, domain, environment in needing_attention(
            session, workspace_id=workspace_id, now=now
        )
    ]
