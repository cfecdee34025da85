"""The pieces of ``releases.switch_recovery`` that need no engine: when a route disagrees
with the database, when a lease's worker is certainly gone, and a canary's final switch
completed by a resumed attempt (docs/design-notes.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from sqlalchemy import select

from shipway.catalog.models import Release
from shipway.db import session_factory, transaction
from shipway.ids import utcnow
from shipway.jobs.context import JobContext
from shipway.releases.switch_recovery import disagrees
from shipway.router.base import Server, ServerState
from shipway.workers_registry import service
from tests.conftest import VersionFactory


def _server(name: str, *, state: ServerState = "ready", weight: int = 100) -> Server:
    return Server(name=name, address="127.0.0.1", port=8000, weight=weight, state=state)


def test_a_route_disagrees_when_another_release_takes_traffic_or_the_serving_one_is_held_back() -> (
    None
):
    old, new = "sw-rel_old-", "sw-rel_new-"
    agreed = [_server(f"{old}0"), _server(f"{new}0", state="drain")]
    assert not disagrees(agreed, serving_id="rel_old")
    assert disagrees([_server(f"{old}0"), _server(f"{new}0")], serving_id="rel_old")  # a mix
    switched = [_server(f"{old}0", state="drain"), _server(f"{new}0")]
    assert disagrees(switched, serving_id="rel_old")
    assert disagrees([_server(f"{old}0", weight=10)], serving_id="rel_old")  # a canary's weight
    # no server of the serving release in the route: nothing to give traffic back to
    assert not disagrees([_server(f"{new}0")], serving_id="rel_old")


def test_a_lease_owner_is_gone_once_its_pid_is_or_its_registry_row_says_so(
    shipway_env: dict[str, str],
) -> None:
    host, now = socket.gethostname(), utcnow()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(ended.stdout)
    with transaction() as session:
        assert service.lease_owner_gone(session, owner=f"{host}/{dead_pid}/abc", now=now)
        assert not service.lease_owner_gone(session, owner=f"{host}/{os.getpid()}/abc", now=now)
        # another host, unknown to the registry: only its lease can tell
        assert not service.lease_owner_gone(session, owner="elsewhere/123/abc", now=now)
        assert not service.lease_owner_gone(session, owner="not-an-owner", now=now)
        worker = service.register(session, hostname="elsewhere", pid=124, queues=["rollouts"])
        assert not service.lease_owner_gone(session, owner="elsewhere/124/abc", now=now)
        service.mark_stopped(session, worker_id=worker.id)
        assert service.lease_owner_gone(session, owner="elsewhere/124/abc", now=now)


def test_a_canary_switch_completed_by_a_resumed_attempt_reads_completed(
    deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    from shipway.events.models import Event
    from shipway.releases.canary import complete_resumed
    from tests.test_rollout_compensation import _failed_promote, _release

    version = make_version(deployment["id"], "ready")
    canary = {"state": "promoting", "step_index": 2, "step_count": 2, "weight": 60}
    release_id = _release(deployment["id"], version, "ACTIVE", canary=canary)
    job_id = _failed_promote(deployment["id"], release_id)
    ctx = JobContext(job_id=job_id, owner="test", attempt=2, session_maker=session_factory())
    complete_resumed(ctx, release_id)
    complete_resumed(ctx, release_id)  # once completed, nothing more
    with session_factory()() as session:
        release = session.get(Release, release_id)
        assert release is not None and release.rollout is not None
        assert release.rollout["canary"] == {**canary, "state": "completed", "weight": 100}
        events = session.scalars(
            select(Event.to_state).where(
                Event.subject_type == "canary", Event.subject_id == release_id
            )
        ).all()
    assert events == ["completed"]
