"""Dispatch: hand queued jobs (by id) to the broker, through the sender an entry point set.

The engine never imports the broker client: ``shipway.bootstrap`` hands it a
``Sender`` (the Celery app's ``send_task``) with ``use_sender``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from sqlalchemy import Connection, Table, bindparam, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.db import UTCDateTime, one_statement, statement_at_a_time
from shipway.ids import utcnow
from shipway.jobs.models import Job
from shipway.storage import is_exhaustion, record

log = logging.getLogger(__name__)

TASK_NAME = "shipway.run_job"
"""The task of a job whose kind the sender was not told (and of messages sent before
task names carried kinds)."""


def task_name(kind: str) -> str:
    """The broker task of a job of ``kind`` (``shipway.publish``, ``shipway.promote``, ...):
    Flower and ``celery events`` list jobs by kind. Every name runs the same job runner."""
    return f"shipway.{kind}" if kind else TASK_NAME


class Queued(NamedTuple):
    """A queued job to hand to the broker: its id, its queue and its kind."""

    job_id: str
    queue: str
    kind: str = ""

    @classmethod
    def of(cls, job: Job) -> Queued:
        """The queued ``job``."""
        return cls(job.id, job.queue, job.kind)


Sender = Callable[[str, str, str], None]
"""Publish one task message (the job id) to a broker queue: ``send(job_id, queue, kind)``."""

_sender: Sender | None = None


def use_sender(sender: Sender) -> None:
    """Set how this process sends jobs to the broker (entry points call it once)."""
    global _sender
    _sender = sender


def send_to_broker(job_id: str, queue: str, kind: str = "") -> None:
    """Publish one task message (the job id only) through the configured sender."""
    if _sender is None:
        raise RuntimeError(
            "no broker sender configured: entry points call shipway.bootstrap.load_features()"
        )
    _sender(job_id, queue, kind)


# After a failed send, request handlers leave new jobs to the relay for this long instead of
# each waiting out a connection attempt (about 2 s) while the broker is down.
BROKER_BACKOFF_SECONDS = 5.0
_broker_down_until = 0.0


def dispatch_after_commit(jobs: Sequence[Queued]) -> int:
    """``dispatch`` for API requests: skipped while the broker was just seen down.

    The jobs stay queued and never dispatched, so the relay sends them on its next
    pass; the API's threads and connections are not held by a dead broker.
    """
    if time.monotonic() < _broker_down_until:
        return 0
    return dispatch(jobs)


def dispatch(
    jobs: Sequence[Queued],
    *,
    session_maker: Callable[[], Session] | None = None,
) -> int:
    """Send queued jobs to the broker; marks those sent (one statement, on a Core
    connection unless ``session_maker`` is given). Never raises."""
    global _broker_down_until
    sent: list[str] = []
    for job_id, queue, kind in (Queued(*job) for job in jobs):  # (id, queue) pairs too
        try:
            send_to_broker(job_id, queue, kind)
        except Exception as error:  # broker down (or its folder full): the relay retries later
            _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
            if is_exhaustion(error):
                record("dispatch", error)
            else:
                log.warning(
                    "broker unreachable, %d job(s) left for the relay: %s", len(jobs), error
                )
            break
        sent.append(job_id)
    if sent:
        try:
            if session_maker is None:
                with one_statement() as conn:
                    mark_dispatched(conn, job_ids=sent, now=utcnow())
            else:
                with session_maker() as session, session.begin():
                    statement_at_a_time(session)
                    mark_dispatched(session, job_ids=sent, now=utcnow())
        except OperationalError:
            log.warning("could not mark %d job(s) dispatched", len(sent))
    return len(sent)


def due_for_dispatch(session: Session, *, now: datetime, limit: int = 500) -> list[Queued]:
    """Queued jobs never sent, or sent but unclaimed for too long."""
    stale = now - timedelta(seconds=get_settings().redispatch_after_seconds)
    rows = session.execute(
        select(Job.id, Job.queue, Job.kind)
        .where(
            Job.state == "queued",
            or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale),
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [Queued(row.id, row.queue, row.kind) for row in rows]


def mark_dispatched(
    session: Session | Connection, *, job_ids: Sequence[str], now: datetime
) -> None:
    """Remember that these jobs were handed to the broker.

    A job being claimed right now (its row locked by the claim's UPDATE) is skipped on
    PostgreSQL rather than waited for: it no longer needs the mark, and the worker's
    claim is on the job's clock while this is not.
    """
    if job_ids:
        session.execute(_MARK, {"ids": list(job_ids), "now": now})


_JOBS = cast(Table, Job.__table__)
_MARK = (
    update(_JOBS)
    .where(
        _JOBS.c.id.in_(
            select(_JOBS.c.id)
            .where(_JOBS.c.id.in_(bindparam("ids", expanding=True)), _JOBS.c.state == "queued")
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        ),
        _JOBS.c.state == "queued",
    )
    .values(
        dispatched_at=bindparam("now", type_=UTCDateTime()),
        dispatch_count=_JOBS.c.dispatch_count + 1,
    )
)
"""Built once: the mark follows every API dispatch (see ``mark_dispatched``)."""
