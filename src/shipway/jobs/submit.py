"""The one way a request submits work: transaction, idempotency record, enqueue, then
dispatch after commit.

A route hands ``submit`` an *action* (the feature's use case, run in the transaction)
that returns what it ``Accepted``: the job it queued or acted on, and how to answer.
The answer embeds the job as ``JobRead`` with its ``queue_position``. With an
``Idempotent`` request the first answer is stored with the work, in the same
transaction, and replayed to a retry with the same key (Stripe semantics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.db import session_factory
from shipway.idempotency import service as idempotency
from shipway.jobs.dispatch import Queued, dispatch_after_commit
from shipway.jobs.lines import queue_position
from shipway.jobs.models import Job
from shipway.jobs.schemas import JobRead

Defer = Callable[[Callable[[Sequence[Queued]], int], Sequence[Queued]], Any]
"""Runs ``dispatch(jobs)`` once the answer is sent (FastAPI's ``BackgroundTasks.add_task``)."""


@dataclass(frozen=True)
class Accepted:
    """What an action did: the job it queued (``enqueued``) or acted on, and the answer."""

    job: Job
    answer: Callable[[JobRead], BaseModel] | None = None  # None: the job itself is the answer
    enqueued: bool = True


@dataclass(frozen=True)
class Idempotent:
    """The Idempotency-Key of a request and the fingerprint of what it asks."""

    key: str
    fingerprint: str

    @classmethod
    def of(cls, key: str | None, *, method: str, path: str, body: BaseModel) -> Idempotent:
        """Check the header (400 if missing or too long) and fingerprint the request."""
        return cls(
            key=idempotency.validate_key(key),
            fingerprint=idempotency.fingerprint(
                method=method, path=path, body=body.model_dump(mode="json")
            ),
        )


@dataclass(frozen=True)
class Submitted:
    """The HTTP status and JSON body to answer with (the stored one on a replay)."""

    status: int
    body: dict[str, Any]


def submit(
    *,
    workspace_id: str,
    action: Callable[[Session], Accepted],
    status: int = 202,
    request: Idempotent | None = None,
    defer: Defer | None = None,
    session_maker: Callable[[], Session] | None = None,
) -> Submitted:
    """Run ``action`` in one transaction (once per key if ``request``), then dispatch the
    jobs it queued: through ``defer`` after the answer, or at once without it."""
    maker = session_maker or session_factory()
    queued: list[Queued] = []
    ours: list[dict[str, Any]] = []

    def run(session: Session) -> tuple[int, dict[str, Any]]:
        accepted = action(session)
        if accepted.enqueued:
            queued.append(Queued.of(accepted.job))
        job = JobRead.model_validate(accepted.job)
        job.queue_position = queue_position(session, job=accepted.job)
        answer = accepted.answer(job) if accepted.answer is not None else job
        ours.append(answer.model_dump(mode="json"))
        return status, ours[-1]

    if request is None:
        with maker() as session, session.begin():
            answered = run(session)
    else:
        answered = idempotency.run_once(
            maker,
            workspace_id=workspace_id,
            key=request.key,
            request_fingerprint=request.fingerprint,
            ttl=timedelta(hours=get_settings().idempotency_ttl_hours),
            action=run,
        )
    if queued and ours and answered[1] is ours[-1]:  # not a replay, nor a lost race
        if defer is not None:
            defer(dispatch_after_commit, list(queued))
        else:
            dispatch_after_commit(list(queued))
    return Submitted(status=answered[0], body=answered[1])
