"""Dispatch: hand queued jobs (by id) to the broker, through the sender an entry point set.

The engine never imports the broker client: ``shipway.bootstrap`` hands it a
``Sender`` (the Celery app's ``send_task``) with ``use_sender``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.db import session_factory
from shipway.ids import utcnow
from shipway.jobs.models import Job

log = logging.getLogger(__name__)

TASK_NAME = "shipway.run_job"
Sender = Callable[[str, str], None]
"""Publish one task message (the job id) to a broker queue: ``send(job_id, queue)``."""

_sender: Sender | None = None


def use_sender(sender: Sender) -> None:
    """Set how this process sends jobs to the broker (entry points call it once)."""
    global _sender
    _sender = sender


def send_to_broker(job_id: str, queue: str) -> None:
    """Publish one task message (the job id only) through the configured sender."""
    if _sender is None:
        raise RuntimeError(
            "no broker sender configured: entry points call shipway.bootstrap.load_features()"
        )
    _sender(job_id, queue)


# After a failed send, request handlers leave new jobs to the relay for this long instead of
# each waiting out a connection attempt (about 2 s) while the broker is down.
BROKER_BACKOFF_SECONDS = 5.0
_broker_down_until = 0.0


def dispatch_after_commit(jobs: Sequence[tuple[str, str]]) -> int:
    """``dispatch`` for API requests: skipped while the broker was just seen down.

    The jobs stay queued and never dispatched, so the relay sends them on its next
    pass; the API's threads and connections are not held by a dead broker.
    """
    if time.monotonic() < _broker_down_until:
        return 0
    return dispatch(jobs)


def dispatch(
    jobs: Sequence[tuple[str, str]],
    *,
    session_maker: Callable[[], Session] | None = None,
) -> int:
    """Send (id, queue) pairs to the broker; marks those sent. Never raises."""
    global _broker_down_until
    maker = session_maker or session_factory()
    sent: list[str] = []
    for job_id, queue in jobs:
        try:
            send_to_broker(job_id, queue)
        except Exception as error:  # broker down: the relay retries later
            _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
            log.warning("broker unreachable, %d job(s) left for the relay: %s", len(jobs), error)
            break
        sent.append(job_id)
    if sent:
        try:
            with maker() as session, session.begin():
                mark_dispatched(session, job_ids=sent, now=utcnow())
        except OperationalError:
            log.warning("could not mark %d job(s) dispatched", len(sent))
    return len(sent)


def due_for_dispatch(session: Session, *, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs never sent, or sent but unclaimed for too long."""
    stale = now - timedelta(seconds=get_settings().redispatch_after_seconds)
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.state == "queued",
            or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale),
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [(row.id, row.queue) for row in rows]


def mark_dispatched(session: Session, *, job_ids: Sequence[str], now: datetime) -> None:
    """Remember that these jobs were handed to the broker."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.state == "queued")
            .values(dispatched_at=now, dispatch_count=Job.dispatch_count + 1)
            .execution_options(synchronize_session=False)
        )
