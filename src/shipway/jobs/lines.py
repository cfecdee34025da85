"""Serial lines: jobs of one (deployment, environment) run one at a time, in order.

Every query about a line (who is ahead, who runs, what waits) lives here; features
ask these instead of writing their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from shipway.ids import utcnow
from shipway.jobs.dispatch import Queued
from shipway.jobs.models import Job


def serial_key_for(deployment_id: str, environment: str) -> str:
    """Jobs sharing this key run one at a time, in order."""
    return f"{deployment_id}:{environment}"


def earlier_in_line(*, job_id: str, serial_key: str | None, created_at: datetime) -> Any:
    """Condition on ``Job``: a job that must run before this one (same line)."""
    return _ahead(Job, job_id=job_id, serial_key=serial_key, created_at=created_at, now=utcnow())


def ahead_of_row_in_line(now: Any) -> Any:
    """Correlated condition: some job must run before the ``jobs`` row of the enclosing
    statement (a claim's UPDATE), with ``now`` the claim's time (a bind parameter)."""
    earlier = aliased(Job, name="earlier")
    row = {"job_id": Job.id, "serial_key": Job.serial_key, "created_at": Job.created_at}
    return exists().where(_ahead(earlier, now=now, **row))


def _ahead(earlier: Any, *, job_id: Any, serial_key: Any, created_at: Any, now: Any) -> Any:
    return and_(
        earlier.serial_key == serial_key,
        earlier.id != job_id,
        or_(
            earlier.state == "running",
            and_(
                earlier.state == "queued",
                # a delayed job (retire after the scale-down delay) blocks no one until due
                or_(earlier.not_before.is_(None), earlier.not_before <= now),
                or_(
                    earlier.created_at < created_at,
                    and_(earlier.created_at == created_at, earlier.id < job_id),
                ),
            ),
        ),
    )


def queue_position(session: Session, *, job: Job) -> int | None:
    """1 when next to run for its (deployment, environment); None if not queued."""
    if job.state != "queued":
        return None
    if job.serial_key is None:
        return 1
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(earlier_in_line(job_id=job.id, serial_key=job.serial_key, created_at=job.created_at))
    )
    return int(ahead or 0) + 1


def next_in_line(session: Session, *, serial_key: str) -> Queued | None:
    """The oldest queued job with this serial key."""
    row = session.execute(
        select(Job.id, Job.queue, Job.kind)
        .where(
            Job.serial_key == serial_key,
            Job.state == "queued",
            or_(Job.not_before.is_(None), Job.not_before <= utcnow()),
        )
        .order_by(Job.created_at, Job.id)
        .limit(1)
    ).first()
    return Queued(row.id, row.queue, row.kind) if row else None


def find_job_id(
    session: Session,
    *,
    states: Iterable[str] | None = None,
    serial_key: str | None = None,
    kinds: Iterable[str] | None = None,
    except_kinds: Iterable[str] = (),
    except_job_id: str | None = None,
    release_id: str | None = None,
    version_id: str | None = None,
    environment: str | None = None,
) -> str | None:
    """The id of one job matching every filter given (any state if ``states`` is None), or None."""
    conditions: list[Any] = []
    if states is not None:
        conditions.append(Job.state.in_(tuple(states)))
    if serial_key is not None:
        conditions.append(Job.serial_key == serial_key)
    if kinds is not None:
        conditions.append(Job.kind.in_(tuple(kinds)))
    if except_kinds:
        conditions.append(Job.kind.not_in(tuple(except_kinds)))
    if except_job_id is not None:
        conditions.append(Job.id != except_job_id)
    if release_id is not None:
        conditions.append(Job.release_id == release_id)
    if version_id is not None:
        conditions.append(Job.version_id == version_id)
    if environment is not None:
        conditions.append(Job.environment == environment)
    return session.scalar(select(Job.id).where(*conditions).limit(1))


def queued_in_line(session: Session, *, serial_key: str, kinds: Iterable[str]) -> Sequence[Job]:
    """The queued (not running) jobs of these kinds waiting in one line."""
    return session.scalars(
        select(Job).where(
            Job.serial_key == serial_key, Job.state == "queued", Job.kind.in_(tuple(kinds))
        )
    ).all()


def busy_lines(session: Session) -> set[str]:
    """Serial keys of the lines in which a job runs now."""
    keys = session.scalars(
        select(Job.serial_key).where(Job.state == "running", Job.serial_key.is_not(None))
    ).all()
    return {key for key in keys if key is not None}
