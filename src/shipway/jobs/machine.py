"""The job state machine of DESIGN.md §2 (see shipway.states)."""

from __future__ import annotations

from shipway.jobs.models import Job
from shipway.states import Machine

JOB = Machine(
    name="job",
    model=Job,
    column="state",
    transitions=frozenset(
        {
            ("queued", "running"),
            ("queued", "cancelled"),
            ("queued", "failed"),  # e.g. deadline passed before any worker claimed it
            ("running", "succeeded"),
            ("running", "failed"),
            ("running", "cancelled"),
            ("running", "queued"),  # lease expired: worker lost, retried
        }
    ),
    subject_is_job=True,
)

TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
