"""The pieces of ``releases.switch_recovery`` that need no engine: when a route disagrees
with the database, and when a lease's worker is certainly gone (docs/design-notes.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from shipway.db import transaction
from shipway.ids import utcnow
from shipway.releases.switch_recovery import disagrees
from shipway.router.base import Server, ServerState
from shipway.workers_registry import service


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
