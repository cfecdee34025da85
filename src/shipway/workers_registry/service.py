"""Register worker processes, record their heartbeats, tell the living from the dead."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.ids import new_id, utcnow
from shipway.router.process import pid_exists
from shipway.workers_registry.models import Worker

ALIVE_AFTER_HEARTBEATS = 3
"""A worker is alive while its last heartbeat is younger than this many heartbeat intervals."""
KEEP_ROWS_FOR = timedelta(days=1)
"""Rows of workers silent for longer than this are deleted when another worker registers."""


def alive_window() -> timedelta:
    """How recent a heartbeat must be for its worker to count as alive."""
    return timedelta(seconds=ALIVE_AFTER_HEARTBEATS * get_settings().heartbeat_seconds)


def is_alive(worker: Worker, *, now: datetime) -> bool:
    """Whether ``worker`` still runs: not stopped, and heartbeating recently."""
    return worker.stopped_at is None and worker.heartbeat_at > now - alive_window()


def register(
    session: Session,
    *,
    hostname: str,
    pid: int,
    queues: Sequence[str],
    node: str | None = None,
) -> Worker:
    """Record a starting worker process; also forgets workers silent for a long time."""
    now = utcnow()
    session.execute(delete(Worker).where(Worker.heartbeat_at < now - KEEP_ROWS_FOR))
    # A pid reused on this host means the process of the older row is gone.
    session.execute(
        update(Worker)
        .where(Worker.hostname == hostname, Worker.pid == pid, Worker.stopped_at.is_(None))
        .values(stopped_at=now, current_job_id=None)
        .execution_options(synchronize_session=False)
    )
    worker = Worker(
        id=new_id("wkr"),
        hostname=hostname,
        pid=pid,
        node=node,
        queues=list(queues),
        started_at=now,
        heartbeat_at=now,
        current_job_id=None,
        stopped_at=None,
    )
    session.add(worker)
    session.flush()
    return worker


def heartbeat(session: Session, *, worker_id: str, current_job_id: str | None) -> bool:
    """Note that the worker is alive and what it runs; False if its row is gone or stopped."""
    result = session.execute(
        update(Worker)
        .where(Worker.id == worker_id, Worker.stopped_at.is_(None))
        .values(heartbeat_at=utcnow(), current_job_id=current_job_id)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_stopped(session: Session, *, worker_id: str) -> None:
    """Record a clean exit of the worker process."""
    session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=utcnow(), current_job_id=None)
        .execution_options(synchronize_session=False)
    )


def recent_workers(session: Session, *, since: datetime) -> Sequence[Worker]:
    """Workers that heartbeated after ``since`` (alive or recently dead), newest first."""
    return session.scalars(
        select(Worker)
        .where(Worker.heartbeat_at >= since)
        .order_by(Worker.heartbeat_at.desc(), Worker.id)
    ).all()


def count_alive(session: Session, *, now: datetime) -> int:
    """How many workers are alive now."""
    count = session.scalar(
        select(func.count())
        .select_from(Worker)
        .where(Worker.stopped_at.is_(None), Worker.heartbeat_at > now - alive_window())
    )
    return int(count or 0)


def parse_lease_owner(owner: str | None) -> tuple[str, int] | None:
    """(hostname, pid) of a job lease owner ``hostname/pid/nonce``; None if not in that form."""
    if not owner:
        return None
    parts = owner.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def worker_for_owner(workers: Iterable[Worker], owner: str | None) -> Worker | None:
    """The worker row of a job's lease owner (same hostname and pid; the latest started)."""
    where = parse_lease_owner(owner)
    if where is None:
        return None
    matches = [w for w in workers if (w.hostname, w.pid) == where]
    return max(matches, key=lambda w: w.started_at) if matches else None


def workers_of_nodes(session: Session, *, nodes: Sequence[str]) -> Sequence[Worker]:
    """Every registered process of these Celery nodes (a node is one worker and its pool)."""
    if not nodes:
        return []
    return session.scalars(select(Worker).where(Worker.node.in_(list(nodes)))).all()


def mark_nodes_stopped(session: Session, *, nodes: Sequence[str]) -> None:
    """Record that these nodes' processes exited (seen by their supervisor, not by silence)."""
    if nodes:
        session.execute(
            update(Worker)
            .where(Worker.node.in_(list(nodes)), Worker.stopped_at.is_(None))
            .values(stopped_at=utcnow(), current_job_id=None)
            .execution_options(synchronize_session=False)
        )


def lease_owner_gone(session: Session, *, owner: str | None, now: datetime) -> bool:
    """Whether the process named by a job's lease owner has certainly stopped, before its
    lease says so: it ran on this host and its pid is gone (or a zombie), or its registry
    row records a clean exit or went silent (no heartbeat for ``alive_window``).

    Hostnames name pid namespaces: processes that share a hostname must share pids too
    (each compose container has a hostname of its own).
    """
    where = parse_lease_owner(owner)
    if where is None:
        return False
    hostname, pid = where
    if hostname == socket.gethostname() and not pid_exists(pid):
        return True
    rows = session.scalars(
        select(Worker)
        .where(Worker.hostname == hostname, Worker.pid == pid)
        .execution_options(populate_existing=True)
    )
    worker = worker_for_owner(rows.all(), owner)
    return worker is not None and not is_alive(worker, now=now)
