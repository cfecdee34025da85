"""Registry of job kinds: each feature registers its handler, queue and compensator.

The engine only looks kinds up here; it never imports the features that register
them. ``shipway.bootstrap.load_features`` imports every feature module that does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from shipway.jobs.context import JobContext
from shipway.jobs.models import Job

Handler = Callable[[JobContext], dict[str, Any] | None]
Compensator = Callable[[Session, Job, str, dict[str, Any] | None], None]

QUEUES = ("builds", "rollouts")


@dataclass(frozen=True)
class JobKind:
    """A registered kind of job: what runs it and on which broker queue."""

    name: str
    queue: str
    run: Handler


_KINDS: dict[str, JobKind] = {}
_COMPENSATORS: dict[str, Compensator] = {}


def handler(kind: str, *, queue: str) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind``, sent to the broker ``queue``."""
    if queue not in QUEUES:
        raise ValueError(f"job kind {kind!r}: unknown queue {queue!r} (one of {QUEUES})")

    def register(fn: Handler) -> Handler:
        _KINDS[kind] = JobKind(name=kind, queue=queue, run=fn)
        return fn

    return register


def compensator(kind: str) -> Callable[[Compensator], Compensator]:
    """Register what to undo or record when a job of ``kind`` fails or is cancelled."""

    def register(fn: Compensator) -> Compensator:
        _COMPENSATORS[kind] = fn
        return fn

    return register


def job_kind(kind: str) -> JobKind:
    """The registration of ``kind``; LookupError if no loaded feature registered it."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise LookupError(
            f"no handler for job kind {kind!r} (registered: {', '.join(sorted(_KINDS))}; "
            "entry points call shipway.bootstrap.load_features() first)"
        ) from None


def handler_for(kind: str) -> Handler:
    """The function that runs jobs of ``kind``."""
    return job_kind(kind).run


def queue_of(kind: str) -> str:
    """The broker queue jobs of ``kind`` are sent to."""
    return job_kind(kind).queue


def kinds() -> list[str]:
    """Every registered job kind, sorted."""
    return sorted(_KINDS)


def compensate(session: Session, job: Job, reason: str, diagnostics: dict[str, Any] | None) -> None:
    """Run the compensator of the job's kind, if any, in the caller's transaction."""
    fn = _COMPENSATORS.get(job.kind)
    if fn is not None:
        fn(session, job, reason, diagnostics)


@handler("noop", queue="rollouts")
def run_noop(ctx: JobContext) -> dict[str, Any]:
    """A job that only sleeps in steps: measures dispatch overhead and exercises the queue.

    ``seconds`` 0 without ``steps`` does nothing at all (no phase, no progress): what
    is left is the queue's own cost (enqueue, dispatch, claim, finish).
    """
    seconds = float(ctx.params.get("seconds", 0))
    steps = int(ctx.params.get("steps", 1 if seconds > 0 else 0))
    if steps <= 0:
        return {"slept_seconds": 0.0, "attempt": ctx.attempt}
    ctx.phase("sleep", step=0, steps=steps)
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        ctx.checkpoint()
        ctx.progress(step=step, steps=steps)
    return {"slept_seconds": seconds, "attempt": ctx.attempt}
