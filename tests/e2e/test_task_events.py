"""Celery task events, as Flower and ``celery events`` read them: each job is a task named
after its kind, and a job that fails is a failed task (it used to be one task name,
shipway.run_job, for everything, and a failed build a successful task)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import wait_for_job
from tests.e2e.test_builds import (  # noqa: F401  (fixtures used by name)
    BASE_IMAGE,
    Builds,
    builds,
    dockerfile_source,
    engine,
    static_site,
)
from tests.support.processes import executable, wait_until

pytestmark = pytest.mark.e2e


class TaskEvents:
    """Celery's own event receiver on the stack's broker, in a thread (what Flower runs)."""

    def __init__(self) -> None:
        from workers.celery_app import current_celery

        self.app = current_celery()
        self.seen: list[dict[str, Any]] = []
        self.listening = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.listening.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=True)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        assert self.listening.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)

    def of_job(self, job_id: str) -> tuple[str, list[str]]:
        """The task name a job was received under and the event types of its task."""
        received = [
            e for e in list(self.seen) if e["type"] == "task-received" and job_id in e["args"]
        ]
        if not received:
            return "", []
        uuid = received[0]["uuid"]
        types = [e["type"] for e in list(self.seen) if e.get("uuid") == uuid]
        return received[0]["name"], types

    def outcome(self, job_id: str) -> dict[str, Any]:
        """The event that ended the job's task (task-succeeded or task-failed)."""
        ended = [
            e
            for e in list(self.seen)
            if e["type"] in ("task-succeeded", "task-failed")
            and any(
                r["uuid"] == e["uuid"] and job_id in r["args"]
                for r in self.seen
                if r["type"] == "task-received"
            )
        ]
        return ended[0] if ended else {}


@pytest.fixture
def events() -> Iterator[TaskEvents]:
    with TaskEvents() as receiver:
        yield receiver


def test_each_job_is_a_task_named_after_its_kind_with_its_real_outcome(
    stack: Stack,
    builds: Builds,  # noqa: F811  (the fixture imported above)
    events: TaskEvents,
) -> None:
    worker = stack.supervisor.spawn(
        "events",
        [executable("shipway"), "worker", "--events", "--hostname", "events@e2e"],
        env=stack.env,
    )
    stack.workers.append(worker)
    stack.wait_ready(worker)

    broken = builds.publish(
        builds.deployment("container"), dockerfile_source(f"FROM {BASE_IMAGE}\nRUN false\n")
    )
    site = builds.publish(builds.deployment("static"), static_site(builds.marker)[0])
    failed_id, built_id = broken["job"]["id"], site["job"]["id"]
    assert wait_for_job(failed_id, timeout=120).state == "failed"
    assert wait_for_job(built_id, timeout=120).state == "succeeded"
    wait_until(
        lambda: events.outcome(failed_id) and events.outcome(built_id),
        timeout=30,
        message="the tasks' end events",
    )

    for job_id in (failed_id, built_id):
        name, types = events.of_job(job_id)
        assert name == "shipway.publish", (name, types)  # was shipway.run_job for every job
        assert types[:2] == ["task-received", "task-started"], types
    failure = events.outcome(failed_id)
    assert failure["type"] == "task-failed"  # was task-succeeded
    assert "JobFailed" in failure["exception"] and failed_id in failure["exception"]
    success = events.outcome(built_id)
    assert success["type"] == "task-succeeded" and "succeeded" in success["result"]
