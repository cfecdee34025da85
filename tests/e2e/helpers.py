"""Test-side access to the job table and the audit trail of an end-to-end test's database."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from shipway.db import session_factory, transaction
from shipway.events.models import Event
from shipway.jobs import lines, queueing
from shipway.jobs.dispatch import Queued
from shipway.jobs.dispatch import dispatch as send_jobs
from shipway.jobs.machine import TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from tests.support.processes import wait_until


def workspace_id(name: str = "e2e") -> str:
    """Id of the workspace ``name`` (created if missing)."""
    from shipway.auth.service import get_or_create_workspace

    with transaction() as session:
        return get_or_create_workspace(session, name=name).id


def enqueue_noop(
    *,
    workspace: str,
    seconds: float,
    steps: int = 4,
    serial_key: str | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    dispatch: bool = True,
) -> str:
    """Write a queued ``noop`` job (the outbox) and, unless told not to, send it to the broker."""
    with transaction() as session:
        job = queueing.enqueue(
            session,
            workspace_id=workspace,
            kind="noop",
            actor="test",
            params={"seconds": seconds, "steps": steps},
            serial_key=serial_key,
            queue=queue,
            max_attempts=max_attempts,
        )
        queued = Queued.of(job)
    if dispatch:
        assert send_jobs([queued]) == 1
    return queued.job_id


def get_job(job_id: str) -> Job:
    """The job row as the database holds it now (detached)."""
    with session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None, job_id
        session.expunge(job)
        return job


def queue_position(job_id: str) -> int | None:
    """The job's position for its (deployment, environment), as the API reports it."""
    with session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None, job_id
        return lines.queue_position(session, job=job)


def job_events(job_id: str) -> list[Event]:
    """The job's state transitions (not its phases), oldest first."""
    with session_factory()() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.job_id == job_id, Event.subject_type == "job")
            .order_by(Event.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def state_path(job_id: str) -> list[str | None]:
    """The job's states in order: [None→]queued, running, … as recorded in Events."""
    events = [e for e in job_events(job_id) if e.from_state != e.to_state]
    return [events[0].from_state, *(e.to_state for e in events)] if events else []


def wait_for_job(
    job_id: str, *, states: frozenset[str] = TERMINAL_JOB_STATES, timeout: float = 30.0
) -> Job:
    """Poll until the job is in one of ``states``; returns its row."""

    def reached() -> Job | None:
        job = get_job(job_id)
        return job if job.state in states else None

    return wait_until(
        reached,
        timeout=timeout,
        message=lambda: f"job {job_id} is {_describe(get_job(job_id))}, wanted {sorted(states)}",
    )


def wait_for_all(job_ids: list[str], *, timeout: float = 60.0) -> list[Job]:
    """Poll until every job ended; returns their rows in the given order."""

    def ended() -> list[Job] | None:
        jobs = [get_job(j) for j in job_ids]
        return jobs if all(j.state in TERMINAL_JOB_STATES for j in jobs) else None

    def pending() -> str:
        jobs = [get_job(j) for j in job_ids]
        return "; ".join(_describe(j) for j in jobs if j.state not in TERMINAL_JOB_STATES)

    return wait_until(ended, timeout=timeout, interval=0.2, message=pending)


def _describe(job: Job) -> str:
    fields: dict[str, Any] = {
        "state": job.state,
        "attempts": job.attempts,
        "owner": job.lease_owner,
        "dispatches": job.dispatch_count,
        "failure": job.failure_reason,
    }
    return f"{job.id} " + " ".join(f"{k}={v}" for k, v in fields.items())


def owner_pid(lease_owner: str) -> int:
    """The pid in a lease owner ``hostname/pid/nonce`` (the prefork child that runs the job)."""
    _host, pid, _nonce = lease_owner.split("/")
    return int(pid)


def unique(prefix: str) -> str:
    """A short unique name."""
    return f"{prefix}-{secrets.token_hex(3)}"


def api_token(*scopes: str, workspace: str = "e2e") -> str:
    """A token secret for ``workspace`` (created if missing), written straight to the database."""
    from shipway.auth.service import create_token, get_or_create_workspace

    with transaction() as session:
        ws = get_or_create_workspace(session, name=workspace)
        _token, secret = create_token(
            session, workspace_id=ws.id, scopes=list(scopes or ("deployments:write",))
        )
        return secret


def seed_ready_version(
    deployment_id: str, *, image: str, command: str = "httpd -f -p 8080 -h /srv/www"
) -> str:
    """Record a version of the deployment and walk it to ``ready`` with a built ``image``.

    ``image`` serves HTTP on port 8080 (as the session's ``static_image`` does), the way a
    finished build of a static site would leave it.
    """
    from tests.support.seed import ready_version

    return ready_version(
        deployment_id,
        actor="test",
        values={
            "artifact_sha256": "sha256:" + secrets.token_hex(32),
            "runtime_image": image,
            "runtime_port": 8080,
            "runtime_command": command,
        },
    )
