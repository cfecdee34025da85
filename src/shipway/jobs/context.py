"""What a job handler sees: its job, phases, progress, cancellation and lease checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from shipway.jobs import lease


class JobFailed(Exception):
    """A handler's classified failure: a stable reason code and diagnostics for a person."""

    def __init__(self, reason: str, diagnostics: dict[str, Any]) -> None:
        super().__init__(f"{reason}: {diagnostics.get('title', '')}")
        self.reason = reason
        self.diagnostics = diagnostics


class JobCancelled(Exception):
    """Raised inside a handler when an operator cancelled the job (or aborted a canary)."""

    def __init__(
        self,
        job_id: str,
        *,
        reason: str = "cancelled",
        diagnostics: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(job_id)
        self.reason = reason
        self.diagnostics = diagnostics


class LeaseLost(Exception):
    """Raised inside a handler when its lease was taken away (the job was reaped)."""


@dataclass
class JobContext:
    """Handed to a handler; every call opens its own short transaction."""

    job_id: str
    owner: str
    attempt: int
    session_maker: Callable[[], Session]
    lease_lost: Callable[[], bool] = field(default=lambda: False)
    # The job's parameters as read by the claim (no further query needed).
    params: dict[str, Any] = field(default_factory=dict)
    # Progress kept across phases (e.g. the canary state, mirrored on the job).
    sticky: dict[str, Any] = field(default_factory=dict)

    def session(self) -> Session:
        """A new session; use ``with ctx.session() as s, s.begin():``."""
        return self.session_maker()

    def checkpoint(self) -> None:
        """Stop here if the job was cancelled or its lease was lost."""
        if self.lease_lost():
            raise LeaseLost(self.job_id)
        with self.session() as session, session.begin():
            self._check(session)

    def _check(self, session: Session) -> None:
        """Raise LeaseLost or JobCancelled, read in one query."""
        holds, cancelled = lease.lease_and_cancel(session, job_id=self.job_id, owner=self.owner)
        if not holds:
            raise LeaseLost(self.job_id)
        if cancelled:
            raise JobCancelled(self.job_id)

    def phase(self, name: str, **progress: Any) -> None:
        """Enter a phase (checks cancellation first, in the same transaction)."""
        if self.lease_lost():
            raise LeaseLost(self.job_id)
        with self.session() as session, session.begin():
            self._check(session)
            lease.set_phase(
                session,
                job_id=self.job_id,
                owner=self.owner,
                phase=name,
                progress={**self.sticky, **progress},
            )

    def progress(self, **progress: Any) -> None:
        """Report progress inside the current phase."""
        with self.session() as session, session.begin():
            lease.set_progress(
                session, job_id=self.job_id, owner=self.owner, progress={**self.sticky, **progress}
            )
