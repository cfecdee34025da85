"""Celery is only the transport: duplicated messages run a job once; lost ones are re-sent."""

from __future__ import annotations

import pytest
import redis

from shipway.db import transaction
from shipway.ids import utcnow
from shipway.jobs import dispatch
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    enqueue_noop,
    get_job,
    job_events,
    state_path,
    wait_for_job,
    workspace_id,
)
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def test_duplicated_delivery_runs_the_job_once(stack: Stack) -> None:
    assert stack.redis is not None
    stack.wait_ready(stack.start_worker("w1", wait=False), stack.start_worker("w2", wait=False))
    job_id = enqueue_noop(workspace=workspace_id(), seconds=1.5, steps=3, dispatch=False)
    for _ in range(5):
        dispatch.send_to_broker(job_id, "rollouts")

    wait_for_job(job_id)
    # Judge only once every duplicate reached a worker and its task returned.
    wait_until(
        lambda: sum(w.log().count("] succeeded in ") for w in stack.workers) >= 5,
        timeout=30,
        message=lambda: stack.supervisor.logs(),
    )
    broker = redis.Redis.from_url(stack.redis.url)
    assert broker.llen("rollouts") == 0

    job = get_job(job_id)
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert state_path(job_id) == [None, "queued", "running", "succeeded"]
    claims = [e for e in job_events(job_id) if (e.from_state, e.to_state) == ("queued", "running")]
    assert len(claims) == 1


def test_relay_sends_a_job_that_was_never_dispatched(stack: Stack) -> None:
    stack.wait_ready(stack.start_worker("w1", wait=False), stack.start_relay(wait=False))
    job_id = enqueue_noop(workspace=workspace_id(), seconds=0.2, steps=1, dispatch=False)

    job = wait_for_job(job_id)
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert job.dispatch_count >= 1  # sent by the relay (again if a slow worker let it go stale)


def test_relay_resends_a_dispatched_job_nobody_claimed(stack: Stack) -> None:
    stack.wait_ready(stack.start_worker("w1", wait=False), stack.start_relay(wait=False))
    job_id = enqueue_noop(workspace=workspace_id(), seconds=0.2, steps=1, dispatch=False)
    # As if it had been sent and the message then lost (e.g. the broker restarted empty).
    with transaction() as session:
        dispatch.mark_dispatched(session, job_ids=[job_id], now=utcnow())

    job = wait_for_job(job_id)
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert job.dispatch_count >= 2  # our pretend send, then the relay's re-send
