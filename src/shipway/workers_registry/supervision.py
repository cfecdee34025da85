"""What a supervising process (``shipway up``) knows of the workers it runs.

``shipway up`` starts its workers itself and sees one die the moment it exits, well before
its heartbeats go stale. It reports them here; ``/readyz`` and ``GET /queue`` show them.
Outside ``shipway up`` nothing reports and both answer as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SupervisedWorker:
    """One worker process started by ``shipway up``."""

    queues: list[str]
    pid: int | None
    alive: bool
    restarts: int
    last_exit: str | None
    restart_in_seconds: float | None


Reporter = Callable[[], list[SupervisedWorker]]
_reporter: Reporter | None = None


def report_with(reporter: Reporter | None) -> None:
    """Set (or clear) what reports this process's supervised workers."""
    global _reporter
    _reporter = reporter


def supervised_workers() -> list[SupervisedWorker] | None:
    """The supervised workers; None when this process supervises none."""
    return None if _reporter is None else _reporter()
