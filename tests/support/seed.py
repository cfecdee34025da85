"""Seed jobs and workers in given states for operator-view tests (service calls + updates)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from shipway.db import transaction
from shipway.ids import utcnow
from shipway.jobs import lease, queueing
from shipway.jobs.models import Job
from shipway.workers_registry import service as registry
from shipway.workers_registry.models import Worker


def ready_version(deployment_id: str, *, actor: str, values: dict[str, Any]) -> str:
    """A version of the deployment walked created → building → ready, as a finished build
    leaves it; ``values`` are the columns the build would record (runtime image, port, …)."""
    from shipway.catalog.machines import VERSION
    from shipway.catalog.models import Deployment
    from shipway.states import transition
    from shipway.versions.service import create_version

    with transaction() as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None, deployment_id
        version = create_version(
            session, deployment=deployment, actor=actor, source_sha256=secrets.token_hex(32)
        )
        for from_state, to_state in (("created", "building"), ("building", "ready")):
            transition(
                session,
                VERSION,
                subject_id=version.id,
                from_state=from_state,
                to_state=to_state,
                actor=actor,
                values=values if to_state == "ready" else None,
            )
        return version.id


def built_version(
    deployment_id: str,
    *,
    image_id: str,
    image_tag: str,
    command: str | None,
    actor: str,
    health_check_path: str | None = None,
) -> str:
    """A ready version of a real built image (its id and tag), as a publish job records it."""
    return ready_version(
        deployment_id,
        actor=actor,
        values={
            "artifact_sha256": image_id,
            "runtime_image": image_tag,
            "runtime_port": 8080,
            "runtime_command": command,
            "health_check_path": health_check_path,
            "artifact_manifest": {"image_id": image_id, "tags": [image_tag]},
        },
    )


def ago(seconds: float) -> datetime:
    """``seconds`` before now (UTC)."""
    return utcnow() - timedelta(seconds=seconds)


def enqueue(workspace_id: str, kind: str = "noop", **fields: Any) -> str:
    """A queued job (the outbox write of ``jobs.queueing.enqueue``)."""
    with transaction() as session:
        return queueing.enqueue(
            session, workspace_id=workspace_id, kind=kind, actor="test", **fields
        ).id


def owner(hostname: str = "host-a", pid: int = 4242) -> str:
    """A lease owner as the runner writes it: ``hostname/pid/nonce``."""
    return f"{hostname}/{pid}/{secrets.token_hex(3)}"


def start(job_id: str, lease_owner: str | None = None) -> str:
    """Claim a queued job; returns its lease owner."""
    lease_owner = lease_owner or owner()
    with transaction() as session:
        assert lease.claim(session, job_id=job_id, owner=lease_owner) is not None, job_id
    return lease_owner


def phase(job_id: str, lease_owner: str, name: str, **progress: Any) -> None:
    """Enter a phase of a running job."""
    with transaction() as session:
        lease.set_phase(session, job_id=job_id, owner=lease_owner, phase=name, progress=progress)


def progress(job_id: str, lease_owner: str, **values: Any) -> None:
    """Report progress of a running job."""
    with transaction() as session:
        lease.set_progress(session, job_id=job_id, owner=lease_owner, progress=values)


def finish(
    job_id: str, lease_owner: str, state: str = "succeeded", failure_reason: str | None = None
) -> None:
    """End a running job."""
    with transaction() as session:
        lease.finish(
            session,
            job_id=job_id,
            owner=lease_owner,
            state=state,
            failure_reason=failure_reason,
            failure_diagnostics={"title": failure_reason} if failure_reason else None,
        )


def ended(
    workspace_id: str,
    state: str = "succeeded",
    *,
    kind: str = "noop",
    failure_reason: str | None = None,
    **columns: Any,
) -> str:
    """A job walked queued → running → ``state``; ``columns`` then overwrite timestamps."""
    job_id = enqueue(workspace_id, kind=kind)
    finish(job_id, start(job_id), state, failure_reason)
    if columns:
        set_columns(job_id, **columns)
    return job_id


def set_columns(job_id: str, **columns: Any) -> None:
    """Overwrite columns of a job (backdating timestamps, for example)."""
    with transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**columns))


def worker(
    hostname: str = "host-a",
    pid: int = 4242,
    *,
    queues: tuple[str, ...] = ("builds", "rollouts"),
    current_job_id: str | None = None,
    heartbeat_age: float = 0.0,
    stopped: bool = False,
) -> str:
    """A registered worker row whose last heartbeat was ``heartbeat_age`` seconds ago."""
    with transaction() as session:
        row = registry.register(session, hostname=hostname, pid=pid, queues=queues, node="n@test")
        session.execute(
            update(Worker)
            .where(Worker.id == row.id)
            .values(
                heartbeat_at=ago(heartbeat_age),
                current_job_id=current_job_id,
                stopped_at=utcnow() if stopped else None,
            )
        )
        return row.id
