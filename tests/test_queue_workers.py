"""Worker registry: registration, heartbeats, liveness, lease owners, the runner hook."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

from shipway.config import get_settings
from shipway.db import session_factory, transaction
from shipway.ids import utcnow
from shipway.jobs import runner
from shipway.workers_registry import presence, service
from shipway.workers_registry.models import Worker
from tests.conftest import TokenFactory
from tests.support import seed
from tests.support.processes import wait_until


def row(worker_id: str) -> Worker:
    with session_factory()() as session:
        found = session.get(Worker, worker_id)
        assert found is not None, worker_id
        session.expunge(found)
        return found


def test_register_heartbeat_and_stop(shipway_env: dict[str, str]) -> None:
    with transaction() as session:
        worker = service.register(
            session, hostname="h", pid=10, queues=["builds", "rollouts"], node="w1@h"
        )
        worker_id = worker.id
    assert worker_id.startswith("wkr_")
    first = row(worker_id)
    assert (first.hostname, first.pid, first.queues, first.node) == (
        "h",
        10,
        ["builds", "rollouts"],
        "w1@h",
    )
    assert service.is_alive(first, now=utcnow())

    with transaction() as session:
        assert service.heartbeat(session, worker_id=worker_id, current_job_id="job_x")
    beat = row(worker_id)
    assert beat.current_job_id == "job_x"
    assert beat.heartbeat_at >= first.heartbeat_at

    with transaction() as session:
        service.mark_stopped(session, worker_id=worker_id)
        assert not service.heartbeat(session, worker_id=worker_id, current_job_id=None)
    stopped = row(worker_id)
    assert stopped.stopped_at is not None and stopped.current_job_id is None
    assert not service.is_alive(stopped, now=utcnow())


def test_alive_means_a_heartbeat_younger_than_three_intervals(
    shipway_env: dict[str, str],
) -> None:
    interval = get_settings().heartbeat_seconds
    young = seed.worker("h", 1, heartbeat_age=2.5 * interval)
    old = seed.worker("h", 2, heartbeat_age=3.5 * interval)
    now = utcnow()
    assert service.is_alive(row(young), now=now)
    assert not service.is_alive(row(old), now=now)
    with session_factory()() as session:
        assert service.count_alive(session, now=now) == 1


def test_a_reused_pid_retires_the_older_row_and_old_rows_are_pruned(
    shipway_env: dict[str, str],
) -> None:
    earlier = seed.worker("h", 7)
    ancient = seed.worker("elsewhere", 8, heartbeat_age=2 * 86400)
    later = seed.worker("h", 7)
    assert row(earlier).stopped_at is not None
    assert row(later).stopped_at is None
    with session_factory()() as session:
        assert session.get(Worker, ancient) is None


def test_lease_owner_maps_to_its_worker(shipway_env: dict[str, str]) -> None:
    assert service.parse_lease_owner("host.example/123/ab12cd") == ("host.example", 123)
    assert service.parse_lease_owner("a/b/c/456/nonce") == ("a/b/c", 456)
    for odd in (None, "", "reaper", "host/notapid/x", "host/12"):
        assert service.parse_lease_owner(odd) is None, odd

    old = seed.worker("h", 5)
    with transaction() as session:
        session.execute(
            update(Worker).where(Worker.id == old).values(started_at=utcnow() - timedelta(hours=1))
        )
    new = seed.worker("h", 5)
    other = seed.worker("h", 6)
    with session_factory()() as session:
        workers = session.scalars(select(Worker)).all()
    assert service.worker_for_owner(workers, "h/5/x").id == new  # type: ignore[union-attr]
    assert service.worker_for_owner(workers, "h/6/x").id == other  # type: ignore[union-attr]
    assert service.worker_for_owner(workers, "h/9/x") is None
    assert service.worker_for_owner(workers, "g/5/x") is None


@pytest.fixture
def fast_heartbeat(shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SHIPWAY_HEARTBEAT_SECONDS", "0.1")
    get_settings.cache_clear()
    monkeypatch.setattr(runner, "_job_listeners", [])
    yield
    presence.stop()


def registered_worker() -> Worker:
    current = presence._current
    assert current is not None
    wait_until(current.registered.is_set, timeout=30, message="never registered")
    assert current.worker_id is not None
    return row(current.worker_id)


def test_presence_registers_this_process_and_heartbeats(fast_heartbeat: None) -> None:
    presence.start(queues=["rollouts"], node="n@test")
    worker = registered_worker()
    assert (worker.hostname, worker.pid) == (socket.gethostname(), os.getpid())
    assert (worker.queues, worker.node) == (["rollouts"], "n@test")
    first_beat = worker.heartbeat_at
    wait_until(lambda: row(worker.id).heartbeat_at > first_beat, timeout=30, message="no heartbeat")

    presence.note_current_job("job_abc")
    wait_until(lambda: row(worker.id).current_job_id == "job_abc", timeout=30)
    presence.note_current_job(None)
    wait_until(lambda: row(worker.id).current_job_id is None, timeout=30)

    presence.stop()
    assert row(worker.id).stopped_at is not None


def test_presence_registers_again_if_its_row_vanished(fast_heartbeat: None) -> None:
    presence.start(queues=["builds"])
    first = registered_worker()
    with transaction() as session:
        session.execute(delete(Worker).where(Worker.id == first.id))

    def registered_again() -> bool:
        current = presence._current
        return current is not None and current.worker_id not in (None, first.id)

    wait_until(registered_again, timeout=30, message="did not register again")
    assert presence._current is not None and presence._current.worker_id is not None
    assert row(presence._current.worker_id).pid == os.getpid()


def test_runner_reports_the_job_it_runs(fast_heartbeat: None, make_token: TokenFactory) -> None:
    """The runner hook tells the registry which job runs; the row shows it during the run."""
    presence.start(queues=["rollouts"])
    worker = registered_worker()
    runner.on_current_job(presence.note_current_job)
    seen: list[str | None] = []

    def observe(job_id: str | None) -> None:
        seen.append(job_id)
        if job_id is not None:  # called while the job runs: the row says so
            wait_until(lambda: row(worker.id).current_job_id == job_id, timeout=30)

    runner.on_current_job(observe)
    runner.on_current_job(observe)  # registering twice calls once
    job_id = seed.enqueue(make_token()["workspace_id"], params={"seconds": 0, "steps": 1})

    assert runner.run_job(job_id, owner=f"{worker.hostname}/{worker.pid}/t") == "succeeded"
    assert seen == [job_id, None]
    wait_until(lambda: row(worker.id).current_job_id is None, timeout=30)


def test_a_failing_listener_never_breaks_a_job(
    fast_heartbeat: None, make_token: TokenFactory
) -> None:
    def broken(_job_id: str | None) -> None:
        raise RuntimeError("observer bug")

    runner.on_current_job(broken)
    job_id = seed.enqueue(make_token()["workspace_id"], params={"seconds": 0, "steps": 1})
    assert runner.run_job(job_id) == "succeeded"
