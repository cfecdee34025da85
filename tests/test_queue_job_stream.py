"""GET /api/v1/jobs/{id}/events: server-sent events of a job (replay, live, resume, logs)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shipway.jobs import stream
from tests.conftest import TokenFactory, auth
from tests.support import seed, sse
from tests.support.processes import wait_until
from tests.test_api_auth import assert_error


def events_of(
    client: TestClient, token: dict[str, str], job_id: str, last_event_id: str | None = None
) -> list[sse.Message]:
    headers = auth(token, **({"Last-Event-ID": last_event_id} if last_event_id else {}))
    response = client.get(f"/api/v1/jobs/{job_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return list(sse.parse(response.text.splitlines()))


def finished_noop(workspace_id: str) -> str:
    job_id = seed.enqueue(workspace_id)
    owner = seed.start(job_id)
    seed.phase(job_id, owner, "sleep", step=0, steps=2)
    seed.progress(job_id, owner, step=1, steps=2)
    seed.phase(job_id, owner, "wake")
    seed.progress(job_id, owner, step=2, steps=2)
    seed.finish(job_id, owner)
    return job_id


def test_replays_a_finished_job_and_ends(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:read")
    job_id = finished_noop(token["workspace_id"])

    messages = events_of(client, token, job_id)
    kinds = [m.event for m in messages]
    assert kinds == ["state", "state", "phase", "phase", "state", "progress", "end"]
    assert [m.data["to_state"] for m in messages[:5]] == [
        "queued",
        "running",
        "sleep",
        "wake",
        "succeeded",
    ]
    assert all(m.data["job_id"] == job_id for m in messages)
    assert messages[2].data["data"] == {"step": 0, "steps": 2}
    progress = {"job_id": job_id, "phase": "wake", "progress": {"step": 2, "steps": 2}}
    assert messages[-2].data == progress
    end = messages[-1].data
    assert (end["job_id"], end["state"], end["failure_reason"]) == (job_id, "succeeded", None)
    event_ids = [int(m.id.split(".")[0]) for m in messages if m.id]
    assert len(event_ids) == len(messages)
    assert event_ids == sorted(event_ids)
    assert [m.data["id"] for m in messages[:5]] == event_ids[:5]


def test_failed_job_ends_with_its_reason(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:read")
    job_id = seed.ended(token["workspace_id"], "failed", failure_reason="build_failed")
    messages = events_of(client, token, job_id)
    assert messages[-1].event == "end"
    assert messages[-1].data["state"] == "failed"
    assert messages[-1].data["failure_reason"] == "build_failed"
    assert messages[-1].data["failure_diagnostics"] == {"title": "build_failed"}
    assert "progress" not in [m.event for m in messages]  # never reported any


def test_last_event_id_resumes_after_it(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:read")
    job_id = finished_noop(token["workspace_id"])
    everything = events_of(client, token, job_id)
    first_phase = next(m for m in everything if m.event == "phase")
    assert first_phase.id is not None

    resumed = events_of(client, token, job_id, last_event_id=first_phase.id)
    assert [m.event for m in resumed] == ["phase", "state", "progress", "end"]
    assert resumed[0].data["to_state"] == "wake"
    assert resumed[0].data["id"] > first_phase.data["id"]


def test_malformed_last_event_id_is_refused(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:read")
    job_id = seed.enqueue(token["workspace_id"])
    response = client.get(
        f"/api/v1/jobs/{job_id}/events", headers=auth(token, **{"Last-Event-ID": "abc"})
    )
    assert_error(response, 422, "invalid_input")


def test_another_workspaces_job_is_not_found(client: TestClient, make_token: TokenFactory) -> None:
    ours = make_token("deployments:read")
    theirs = make_token("deployments:read", workspace="other")
    job_id = seed.enqueue(theirs["workspace_id"])
    assert_error(client.get(f"/api/v1/jobs/{job_id}/events", headers=auth(ours)), 404)
    assert_error(client.get("/api/v1/jobs/job_missing/events", headers=auth(ours)), 404)
    assert_error(client.get(f"/api/v1/jobs/{job_id}/events"), 401)


def test_publish_job_streams_its_build_log(client: TestClient, make_token: TokenFactory) -> None:
    from shipway.sources.store import source_store

    token = make_token("deployments:read")
    version_id = "ver_streamtest"
    job_id = seed.enqueue(token["workspace_id"], kind="publish", version_id=version_id)
    owner = seed.start(job_id)
    seed.phase(job_id, owner, "build")
    log = source_store().build_log(version_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Step 1/2 : FROM base\nStep 2/2 : COPY . /srv\nno newline at the end")
    seed.finish(job_id, owner, "failed", "build_failed")

    messages = events_of(client, token, job_id)
    lines = [m.data["line"] for m in messages if m.event == "log"]
    assert lines == ["Step 1/2 : FROM base", "Step 2/2 : COPY . /srv", "no newline at the end"]
    assert messages[-1].event == "end"
    offsets = [int(m.id.split(".")[1]) for m in messages if m.event == "log" and m.id]
    assert offsets == sorted(offsets) and offsets[-1] == log.stat().st_size

    after_first = next(m for m in messages if m.event == "log")
    resumed = events_of(client, token, job_id, last_event_id=after_first.id)
    assert [m.data["line"] for m in resumed if m.event == "log"] == lines[1:]
    assert [m.event for m in resumed if m.event in ("state", "phase")] == []


class CountingPolls:
    """Wraps ``stream.poll_job`` to count completed polls (to step a live job in lockstep)."""

    def __init__(self) -> None:
        self.done = 0
        self.lock = threading.Lock()
        self.original = stream.poll_job

    def __call__(self, **kwargs: Any) -> Any:
        result = self.original(**kwargs)
        with self.lock:
            self.done += 1
        return result

    def wait_for_a_poll_started_after_now(self) -> None:
        # A poll in flight now may have read the old state; the one after it cannot.
        target = self.done + 2
        wait_until(lambda: self.done >= target, timeout=30, message="the stream stopped polling")


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingPolls]:
    counter = CountingPolls()
    monkeypatch.setattr(stream, "poll_job", counter)
    monkeypatch.setattr(stream, "POLL_SECONDS", 0.02)
    yield counter


def test_live_job_streams_phases_progress_and_end(
    client: TestClient, make_token: TokenFactory, polls: CountingPolls
) -> None:
    token = make_token("deployments:read")
    job_id = seed.enqueue(token["workspace_id"])
    owner = seed.start(job_id)
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            polls.wait_for_a_poll_started_after_now()
            seed.phase(job_id, owner, "sleep", step=0, steps=3)
            for step in (1, 2, 3):
                polls.wait_for_a_poll_started_after_now()
                seed.progress(job_id, owner, step=step, steps=3)
            polls.wait_for_a_poll_started_after_now()
            seed.finish(job_id, owner)
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    messages = events_of(client, token, job_id)  # returns once the stream ended
    driver.join(timeout=30)
    assert failures == []

    kinds = [m.event for m in messages]
    assert kinds[:2] == ["state", "state"]  # replayed: queued, running
    assert kinds[-2:] == ["state", "end"]
    steps = [m.data["progress"].get("step") for m in messages if m.event == "progress"]
    assert steps == [0, 1, 2, 3]  # every change was seen, in order
    assert kinds.index("phase") < kinds.index("progress")
    assert messages[-1].data["state"] == "succeeded"
