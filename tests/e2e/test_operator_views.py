"""Operator views against a real fleet: Celery workers, relay, Redis, PostgreSQL, the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from shipway.db import transaction
from shipway.jobs import dispatch, queueing
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    api_token,
    enqueue_noop,
    get_job,
    owner_pid,
    wait_for_all,
    workspace_id,
)
from tests.support import sse
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


def queue_view(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/api/v1/queue")
    assert response.status_code == 200, response.text
    return dict(response.json())


def rollouts(view: dict[str, Any]) -> dict[str, Any]:
    return next(q for q in view["queues"] if q["name"] == "rollouts")


def at(view: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(view["generated_at"].replace("Z", "+00:00"))


def running_job(view: dict[str, Any], job_id: str) -> dict[str, Any] | None:
    return next((j for g in view["running"] for j in g["jobs"] if j["id"] == job_id), None)


def test_queue_view_follows_depth_a_worker_and_its_death(stack: Stack) -> None:
    api = stack.start_api()
    client = api.client(api_token("admin"))
    workspace = workspace_id()

    # No worker runs: accepted jobs wait, and the queue view shows them waiting longer.
    first = enqueue_noop(workspace=workspace, seconds=60, steps=60)
    earlier = queue_view(client)
    assert (rollouts(earlier)["depth"], rollouts(earlier)["oldest_job_id"]) == (1, first)
    enqueue_noop(workspace=workspace, seconds=0.1, steps=1)
    later = queue_view(client)
    assert (rollouts(later)["depth"], rollouts(later)["oldest_job_id"]) == (2, first)
    assert at(later) >= at(earlier)
    assert (
        rollouts(later)["oldest_queued_age_seconds"]
        >= rollouts(earlier)["oldest_queued_age_seconds"]
    )
    assert later["workers"] == [] and later["workers_summary"]["alive"] == 0

    # A worker starts: its prefork child registers and shows the job it runs.
    worker = stack.start_worker("w1")

    def first_runs_on_a_live_worker() -> tuple[dict[str, Any], dict[str, Any]] | None:
        view = queue_view(client)
        job = running_job(view, first)
        if job is None or job["worker"] is None or job["phase"] != "sleep":
            return None
        row = next(w for w in view["workers"] if w["id"] == job["worker"]["id"])
        return (job, row) if row["alive"] and row["current_job_id"] == first else None

    job, row = wait_until(first_runs_on_a_live_worker, timeout=60, interval=0.2)
    assert row["busy"] and job["worker"]["alive"]
    host, pid = job["lease_owner"].split("/")[0], owner_pid(job["lease_owner"])
    assert (row["hostname"], row["pid"]) == (host, pid)  # lease owner ↔ worker row
    assert stack.supervisor.owner_of(row["pid"]) is worker
    assert row["pid"] != worker.pid  # the prefork child that runs jobs, not the main process
    assert (row["node"], row["queues"]) == ("w1@e2e", ["builds", "rollouts"])

    # SIGKILL the worker: its heartbeat ages out, the job's lease expires.
    worker.kill()

    def dead_and_stuck() -> dict[str, Any] | None:
        view = queue_view(client)
        dead = next(w for w in view["workers"] if w["id"] == row["id"])
        stuck = [s for s in view["stuck"] if s["id"] == first]
        if dead["alive"] or not stuck:
            return None
        return view

    view = wait_until(dead_and_stuck, timeout=30, interval=0.2)
    assert view["workers_summary"]["alive"] == 0
    (stuck,) = [s for s in view["stuck"] if s["id"] == first]
    assert (stuck["stuck_reason"], stuck["state"]) == ("lease_expired", "running")
    assert stuck["lease_owner"] == job["lease_owner"]
    assert running_job(view, first)["worker"]["alive"] is False  # type: ignore[index]
    # Nothing reaps it yet (no relay runs): it stays stuck.
    assert [s["stuck_reason"] for s in queue_view(client)["stuck"] if s["id"] == first] == [
        "lease_expired"
    ]

    # The reaper requeues it: no longer stuck, back in the queue's depth.
    stack.start_relay()
    wait_until(lambda: get_job(first).state == "queued", timeout=30)
    view = queue_view(client)
    assert [s for s in view["stuck"] if s["id"] == first] == []
    assert running_job(view, first) is None
    assert rollouts(view)["depth"] >= 1 and get_job(first).attempts == 1


def test_failures_are_grouped_by_reason(stack: Stack) -> None:
    api = stack.start_api()
    client = api.client(api_token("deployments:read"))
    workspace = workspace_id()
    stack.wait_ready(
        stack.start_worker("rollouts-only", queues="rollouts", wait=False),
        stack.start_relay(wait=False),
    )

    broken = []
    for _ in range(2):  # the noop handler cannot read its params: internal_error
        with transaction() as session:
            job = queueing.enqueue(
                session,
                workspace_id=workspace,
                kind="noop",
                actor="test",
                params={"seconds": "not a number"},
            )
            broken.append(job.id)
    dispatch.dispatch([dispatch.Queued(job_id, "rollouts", "noop") for job_id in broken])
    overdue = []  # no worker consumes builds: the reaper fails them at their deadline
    for _ in range(3):
        with transaction() as session:
            job = queueing.enqueue(
                session,
                workspace_id=workspace,
                kind="noop",
                actor="test",
                queue="builds",
                deadline_seconds=0.5,
            )
            overdue.append(job.id)
    fine = enqueue_noop(workspace=workspace, seconds=0.1, steps=1)

    jobs = wait_for_all([*broken, *overdue, fine], timeout=60)
    assert [j.state for j in jobs] == ["failed"] * 5 + ["succeeded"]

    failures = {f["failure_reason"]: f for f in queue_view(client)["failures_last_hour"]}
    assert set(failures) == {"deadline_exceeded", "internal_error"}
    assert failures["deadline_exceeded"]["count"] == 3
    assert failures["internal_error"]["count"] == 2
    latest_broken = max((get_job(j) for j in broken), key=lambda j: (j.finished_at, j.id))
    assert failures["internal_error"]["latest_job_id"] == latest_broken.id
    assert failures["deadline_exceeded"]["latest_job_id"] in overdue
    assert list(failures) == ["deadline_exceeded", "internal_error"]  # most frequent first


def stream_events(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: str | None = None,
    on_first: Any = None,
) -> list[sse.Message]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    messages: list[sse.Message] = []
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in sse.parse(response.iter_lines()):
            messages.append(message)
            if len(messages) == 1 and on_first is not None:
                on_first()
            if message.event == "end":
                break
    return messages


def test_job_event_stream_of_a_running_noop_job(stack: Stack) -> None:
    api = stack.start_api()
    client = api.client(api_token("deployments:read"))
    stack.start_worker("w1")
    job_id = enqueue_noop(workspace=workspace_id(), seconds=1.5, steps=3, dispatch=False)

    # Connected before the job runs: the worker starts it only once the stream is open.
    messages = stream_events(
        client, job_id, on_first=lambda: dispatch.dispatch([dispatch.Queued(job_id, "rollouts")])
    )
    kinds = [m.event for m in messages]
    assert kinds[0] == "state" and messages[0].data["to_state"] == "queued"
    states = [m.data["to_state"] for m in messages if m.event == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert [m.data["to_state"] for m in messages if m.event == "phase"] == ["sleep"]
    steps = [m.data["progress"]["step"] for m in messages if m.event == "progress"]
    assert steps == sorted(steps) and steps[-1] == 3
    assert kinds.index("phase") < kinds.index("progress")
    assert kinds[-1] == "end" and messages[-1].data["state"] == "succeeded"
    assert messages[-1].data["result"] == {"slept_seconds": 1.5, "attempt": 1}
    cursors = [int(m.id.split(".")[0]) for m in messages if m.id]
    assert len(cursors) == len(messages) and cursors == sorted(cursors)

    # Reconnecting with Last-Event-ID resumes after that event.
    phase = next(m for m in messages if m.event == "phase")
    resumed = stream_events(client, job_id, last_event_id=phase.id)
    assert [m.event for m in resumed if m.event in ("state", "phase")] == ["state"]
    assert all(m.data["id"] > phase.data["id"] for m in resumed if m.event == "state")
    assert resumed[-1].event == "end"
