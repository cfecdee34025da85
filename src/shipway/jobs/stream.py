"""A job's live event stream: its audited events, progress, build log lines, then its end.

The stream is transport-agnostic (``StreamItem``s); ``stream_routes`` sends them as
server-sent events. Every item carries a cursor ``"<event id>.<log bytes>"``: the last
audit event delivered and how much of the build log was; a client that reconnects with
it (``Last-Event-ID``) gets only what it has not seen yet.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.db import session_factory
from shipway.errors import InvalidInput
from shipway.events.models import Event
from shipway.events.schemas import EventRead
from shipway.jobs.machine import TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from shipway.sources.store import source_store

POLL_SECONDS = 0.3
EVENTS_PER_POLL = 500
LOG_BYTES_PER_POLL = 1 << 20


@dataclass(frozen=True)
class Cursor:
    """How far a client has read: the last audit event id and the build log bytes."""

    event_id: int = 0
    log_offset: int = 0

    def encode(self) -> str:
        """The cursor as an SSE event id."""
        return f"{self.event_id}.{self.log_offset}"

    @classmethod
    def parse(cls, raw: str | None) -> Cursor:
        """Read a ``Last-Event-ID``; empty means from the start."""
        if not raw or not raw.strip():
            return cls()
        event_id, _, log_offset = raw.strip().partition(".")
        if not event_id.isdigit() or not (log_offset or "0").isdigit():
            raise InvalidInput(
                "Last-Event-ID must be an event id sent by this stream, e.g. '42.1024'",
                field="Last-Event-ID",
            )
        return cls(int(event_id), int(log_offset or 0))


@dataclass(frozen=True)
class StreamItem:
    """One message: its type (``state``, ``phase``, ``transition``, ``progress``, ``log``,
    ``end``), JSON data and the cursor after it."""

    event: str
    data: dict[str, Any]
    cursor: Cursor


@dataclass
class _Poll:
    state: str
    phase: str | None
    progress: dict[str, Any]
    kind: str
    version_id: str | None
    end: dict[str, Any]
    events: Sequence[Event] = field(default_factory=list)


def _event_type(event: Event) -> str:
    if event.subject_type == "job":
        return "state"
    if event.subject_type == "job_phase":
        return "phase"
    return "transition"  # a version or release moved as part of this job


def _poll(session: Session, *, job_id: str, after_id: int) -> _Poll:
    """The job now, then its events after ``after_id``.

    The job is read first: once it is terminal, every event it wrote before ending is
    already committed, so the events read next include all of them.
    """
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None, job_id
    snapshot = _Poll(
        state=job.state,
        phase=job.phase,
        progress=dict(job.progress or {}),
        kind=job.kind,
        version_id=job.version_id,
        end={
            "job_id": job.id,
            "state": job.state,
            "failure_reason": job.failure_reason,
            "failure_diagnostics": job.failure_diagnostics,
            "result": job.result,
        },
    )
    snapshot.events = session.scalars(
        select(Event)
        .where(Event.job_id == job_id, Event.id > after_id)
        .order_by(Event.id)
        .limit(EVENTS_PER_POLL)
    ).all()
    return snapshot


def poll_job(*, job_id: str, after_id: int) -> _Poll:
    """One look at the job and its new events, in a short read-only session."""
    with session_factory()() as session, session.begin():
        return _poll(session, job_id=job_id, after_id=after_id)


class LogTail:
    """Complete lines appended to a file since ``offset`` (restarts if the file is replaced)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path, self.offset = path, offset
        self.inode: int | None = None

    def read(self, *, final: bool = False) -> list[tuple[str, int]]:
        """New (line, offset after it) pairs; ``final`` also returns an unterminated last line."""
        try:
            with open(self.path, "rb") as handle:
                facts = os.fstat(handle.fileno())
                if (self.inode is not None and facts.st_ino != self.inode) or (
                    facts.st_size < self.offset
                ):
                    self.offset = 0  # a retried build started a new log
                self.inode = facts.st_ino
                handle.seek(self.offset)
                chunk = handle.read(LOG_BYTES_PER_POLL)
        except FileNotFoundError:
            return []
        lines = []
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            lines.append((chunk[start:end], self.offset + end + 1))
            start = end + 1
        if final and start < len(chunk) and len(chunk) < LOG_BYTES_PER_POLL:
            lines.append((chunk[start:], self.offset + len(chunk)))
        if lines:
            self.offset = lines[-1][1]
        return [(raw.decode("utf-8", errors="replace").rstrip("\r"), at) for raw, at in lines]


async def job_events(
    *, job_id: str, cursor: Cursor, poll_seconds: float = POLL_SECONDS
) -> AsyncIterator[StreamItem]:
    """Replay the job's past events after ``cursor``, then follow it until it ends.

    Yields audit events (``state``, ``phase``, ``transition``) in id order, a
    ``progress`` item whenever ``jobs.progress`` changes (once on connect if not empty),
    the build log lines of a publish job (``log``), and finally ``end``.
    """
    last_progress: dict[str, Any] | None = None
    tail: LogTail | None = None
    while True:
        poll = await asyncio.to_thread(poll_job, job_id=job_id, after_id=cursor.event_id)
        ended = poll.state in TERMINAL_JOB_STATES
        for event in poll.events:
            cursor = Cursor(event.id, cursor.log_offset)
            data = EventRead.model_validate(event).model_dump(mode="json")
            yield StreamItem(_event_type(event), data, cursor)
        if poll.kind == "publish" and poll.version_id:
            if tail is None:
                tail = LogTail(source_store().build_log(poll.version_id), cursor.log_offset)
            drain = ended and len(poll.events) < EVENTS_PER_POLL  # the log is complete
            while lines := await asyncio.to_thread(tail.read, final=drain):
                for line, offset in lines:
                    cursor = Cursor(cursor.event_id, offset)
                    yield StreamItem("log", {"job_id": job_id, "line": line}, cursor)
                if not drain:
                    break
        if poll.progress != last_progress and (poll.progress or last_progress is not None):
            last_progress = poll.progress
            data = {"job_id": job_id, "phase": poll.phase, "progress": poll.progress}
            yield StreamItem("progress", data, cursor)
        if len(poll.events) >= EVENTS_PER_POLL:
            continue  # more to replay before waiting
        if ended:
            yield StreamItem("end", poll.end, cursor)
            return
        await asyncio.sleep(poll_seconds)
