"""One rollout at a time per (deployment, environment), in order; other keys run in parallel."""

from __future__ import annotations

import pytest

from shipway.jobs.models import Job
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    enqueue_noop,
    get_job,
    job_events,
    queue_position,
    wait_for_all,
    workspace_id,
)
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def _claim_and_end_event_ids(job_id: str) -> tuple[int, int]:
    events = [e for e in job_events(job_id) if e.from_state != e.to_state]
    claim = next(e.id for e in events if e.to_state == "running")
    end = next(e.id for e in events if e.from_state == "running")
    return claim, end


def test_same_serial_key_runs_one_at_a_time_in_order(stack: Stack) -> None:
    stack.wait_ready(stack.start_worker("w1", wait=False), stack.start_worker("w2", wait=False))
    workspace = workspace_id()
    key = "dep_e2e:production"
    first = enqueue_noop(workspace=workspace, seconds=2, steps=4, serial_key=key)
    second = enqueue_noop(workspace=workspace, seconds=1, steps=2, serial_key=key)

    seen_waiting = False

    def both_done() -> bool:
        nonlocal seen_waiting
        a, b = get_job(first), get_job(second)
        assert not (a.state == "running" and b.state == "running"), "both rollouts ran at once"
        if a.state == "running" and b.state == "queued":
            position = queue_position(second)
            # States only move forward here, so if both are unchanged after the read,
            # they held while the position was computed.
            if (get_job(first).state, get_job(second).state) == ("running", "queued"):
                assert position == 2
                seen_waiting = True
        return a.state == "succeeded" and b.state == "succeeded"

    wait_until(both_done, timeout=60, interval=0.05, message="the two rollouts did not finish")
    assert seen_waiting, "never saw the second rollout waiting behind the running first"

    a, b = get_job(first), get_job(second)
    assert (a.attempts, b.attempts) == (1, 1)
    first_claim, first_end = _claim_and_end_event_ids(first)
    second_claim, _ = _claim_and_end_event_ids(second)
    assert first_claim < first_end < second_claim
    assert a.finished_at is not None and b.started_at is not None
    assert b.started_at >= a.finished_at


def test_different_serial_keys_run_in_parallel(stack: Stack) -> None:
    stack.wait_ready(stack.start_worker("w1", wait=False), stack.start_worker("w2", wait=False))
    workspace = workspace_id()
    jobs = [
        enqueue_noop(workspace=workspace, seconds=2, steps=4, serial_key=f"dep_e2e:{env}")
        for env in ("production", "staging")
    ]

    def both_running() -> bool:
        return all(get_job(j).state == "running" for j in jobs)

    wait_until(both_running, timeout=30, interval=0.05, message="the two jobs never overlapped")
    done: list[Job] = wait_for_all(jobs)
    assert [j.state for j in done] == ["succeeded", "succeeded"]
    owners = {next(e.actor for e in job_events(j) if e.to_state == "running") for j in jobs}
    assert len({owner.split("/")[1] for owner in owners}) == 2  # two different worker processes
