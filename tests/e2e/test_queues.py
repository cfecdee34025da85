"""Separate ``builds`` and ``rollouts`` queues: a long build never blocks a rollout."""

from __future__ import annotations

import pytest
import redis

from tests.e2e.conftest import Stack
from tests.e2e.helpers import enqueue_noop, get_job, wait_for_job, workspace_id

pytestmark = pytest.mark.e2e


def test_rollouts_worker_never_takes_a_builds_job(stack: Stack) -> None:
    assert stack.redis is not None
    stack.start_worker("rollouts-only", queues="rollouts")
    workspace = workspace_id()

    build = enqueue_noop(workspace=workspace, seconds=0.2, steps=1, queue="builds")
    rollout = enqueue_noop(workspace=workspace, seconds=0.2, steps=1)
    assert get_job(build).queue == "builds"

    # The rollout, sent after the build, runs: the worker is consuming.
    done = wait_for_job(rollout)
    assert done.state == "succeeded"
    # ... and the build was never touched: not claimed, still waiting in its own queue.
    waiting = get_job(build)
    assert (waiting.state, waiting.attempts, waiting.lease_owner) == ("queued", 0, None)
    broker = redis.Redis.from_url(stack.redis.url)
    assert broker.llen("builds") == 1
    assert broker.llen("rollouts") == 0

    stack.start_worker("builds-only", queues="builds")
    built = wait_for_job(build)
    assert (built.state, built.attempts) == ("succeeded", 1)
