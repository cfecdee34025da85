"""Registry of job handlers by kind, and their compensation when a job ends badly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from shipway.jobs.context import JobContext
from shipway.jobs.models import Job

Handler = Callable[[JobContext], dict[str, Any] | None]
Compensator = Callable[[Session, Job, str, dict[str, Any] | None], None]

_HANDLERS: dict[str, Handler] = {}
_COMPENSATORS: dict[str, Compensator] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind``."""

    def register(fn: Handler) -> Handler:
        _HANDLERS[kind] = fn
        return fn

    return register


def compensator(kind: str) -> Callable[[Compensator], Compensator]:
    """Register what to undo or record when a job of ``kind`` fails or is cancelled."""

    def register(fn: Compensator) -> Compensator:
        _COMPENSATORS[kind] = fn
        return fn

    return register


def handler_for(kind: str) -> Handler:
    """The handler of ``kind`` (imports the feature modules that register them)."""
    _load()
    try:
        return _HANDLERS[kind]
    except KeyError:
        raise LookupError(f"no handler for job kind {kind!r}") from None


def compensate(session: Session, job: Job, reason: str, diagnostics: dict[str, Any] | None) -> None:
    """Run the compensator of the job's kind, if any, in the caller's transaction."""
    _load()
    fn = _COMPENSATORS.get(job.kind)
    if fn is not None:
        fn(session, job, reason, diagnostics)


def _load() -> None:
    import shipway.builds.publish  # registers publish
    import shipway.releases.rollout  # noqa: F401  (registers promote and rollback)


@handler("noop")
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
