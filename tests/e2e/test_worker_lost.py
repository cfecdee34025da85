"""A worker killed mid-job (kill -9): the lease expires, the reaper requeues, another runs it."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    enqueue_noop,
    get_job,
    job_events,
    owner_pid,
    state_path,
    wait_for_job,
    workspace_id,
)
from tests.support.processes import Service, wait_until

pytestmark = pytest.mark.e2e


def _kill_worker_running(stack: Stack, job_id: str) -> tuple[Service, str]:
    """Wait until the job runs and made progress, then SIGKILL its worker's whole group."""

    def running_with_progress() -> str | None:
        job = get_job(job_id)
        if job.state == "running" and job.lease_owner and job.progress.get("step", 0) >= 1:
            return job.lease_owner
        return None

    owner = wait_until(running_with_progress, timeout=30, message=f"{job_id} never ran")
    pid = owner_pid(owner)
    worker = stack.supervisor.owner_of(pid)
    assert worker.pid != pid, "the job runs in a prefork child, not in the worker's main process"
    worker.kill()
    return worker, owner


def test_killed_worker_job_is_requeued_and_finished_by_another(stack: Stack) -> None:
    first = stack.start_worker("doomed")
    stack.start_relay()
    job_id = enqueue_noop(workspace=workspace_id(), seconds=3, steps=6)

    killed, owner = _kill_worker_running(stack, job_id)
    assert not killed.alive()
    assert first is killed
    stack.start_worker("survivor")

    job = wait_for_job(job_id, timeout=60)
    assert job.state == "succeeded", job.failure_diagnostics
    assert job.attempts == 2
    assert job.failure_reason is None
    assert job.result == {"slept_seconds": 3.0, "attempt": 2}
    assert state_path(job_id) == [None, "queued", "running", "queued", "running", "succeeded"]

    events = [e for e in job_events(job_id) if e.from_state != e.to_state]
    first_claim, requeue, second_claim = events[1], events[2], events[3]
    assert first_claim.actor == owner
    assert requeue.reason.startswith("worker_lost")
    assert requeue.actor == "reaper"
    assert second_claim.actor != owner
    assert second_claim.actor.split("/")[1] != owner.split("/")[1]


def test_killed_worker_job_fails_worker_lost_after_max_attempts(stack: Stack) -> None:
    stack.start_worker("doomed")
    stack.start_relay()
    job_id = enqueue_noop(workspace=workspace_id(), seconds=3, steps=6, max_attempts=1)

    _killed, owner = _kill_worker_running(stack, job_id)

    job = wait_for_job(job_id, timeout=30)
    assert job.state == "failed"
    assert job.attempts == 1
    assert job.failure_reason == "worker_lost"
    diagnostics = job.failure_diagnostics
    assert diagnostics is not None
    assert {"title", "description", "action", "evidence"} <= diagnostics.keys()
    assert all(isinstance(diagnostics[k], str) and diagnostics[k] for k in ("title", "action"))
    assert diagnostics["evidence"]["attempts"] == 1
    assert diagnostics["evidence"]["max_attempts"] == 1
    assert diagnostics["evidence"]["last_lease_owner"] == owner
    assert diagnostics["evidence"]["phase"] == "sleep"
    assert job.lease_owner is None
    assert job.finished_at is not None
    assert state_path(job_id) == [None, "queued", "running", "failed"]
    assert job_events(job_id)[-1].reason.startswith("worker_lost")


def test_frozen_worker_that_wakes_up_after_its_lease_cannot_finish_the_job(stack: Stack) -> None:
    stack.wait_ready(stack.start_worker("frozen", wait=False), stack.start_relay(wait=False))
    job_id = enqueue_noop(workspace=workspace_id(), seconds=3, steps=6)

    def running_with_progress() -> str | None:
        job = get_job(job_id)
        if job.state == "running" and job.lease_owner and job.progress.get("step", 0) >= 1:
            return job.lease_owner
        return None

    owner = wait_until(running_with_progress, timeout=30, message=f"{job_id} never ran")
    frozen = stack.supervisor.owner_of(owner_pid(owner))
    frozen.signal_group(signal.SIGSTOP)  # a long GC pause, a swapped-out VM, a stuck NFS read
    try:
        stack.start_worker("healthy")
        wait_until(
            lambda: get_job(job_id).attempts == 2,
            timeout=30,
            message=lambda: f"{job_id} was not retried: {get_job(job_id).state}",
        )
    finally:
        frozen.signal_group(signal.SIGCONT)

    job = wait_for_job(job_id, timeout=60)
    assert (job.state, job.attempts) == ("succeeded", 2)
    # The woken worker noticed it lost the lease and gave up: it records no outcome.
    frozen.wait_for_log("lease lost", timeout=30)
    assert state_path(job_id) == [None, "queued", "running", "queued", "running", "succeeded"]
    end = job_events(job_id)[-1]
    assert end.actor != owner
    assert get_job(job_id).result == {"slept_seconds": 3.0, "attempt": 2}
