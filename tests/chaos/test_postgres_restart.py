"""PostgreSQL restarted (``pg_ctl restart -m fast``) while jobs run.

The session's shared PostgreSQL server serves every other test, so this test
starts a PostgreSQL cluster of its own, migrates it, and runs the usual stack on
it: two workers, the relay and a ``shipway api`` process. Noop jobs (sleeping in
steps, touching the database at each step) and one real promote are running
when the server is restarted; a client keeps reading the API throughout.

Afterwards, with no manual step: every job ended exactly once (one terminal
Event; succeeded, or failed with a diagnosis); the API answered only 200 or the
documented ``503 database_unavailable`` during the restart and 200 after it;
every shipway process is still alive; the workers consume new jobs and the API
accepts and runs a new promote.
"""

from __future__ import annotations

import collections
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from shipway.config import get_settings
from tests.chaos.support import FULL, SCALE, assert_jobs_ran_cleanly, describe_jobs
from tests.e2e.conftest import FAST_SETTINGS, Stack, _router_dir, _use_settings
from tests.e2e.helpers import (
    api_token,
    enqueue_noop,
    seed_ready_version,
    unique,
    wait_for_all,
    wait_for_job,
    workspace_id,
)
from tests.support.processes import Supervisor, wait_until
from tests.support.services import Postgres, start_postgres, start_redis

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(900 if FULL else 300)]


@pytest.fixture
def own_postgres(scratch: Path) -> Iterator[Postgres]:
    """A PostgreSQL cluster for this test alone (restarting the shared one would hurt others)."""
    folder = scratch / f"chaos-pg-{secrets.token_hex(3)}"
    pg = start_postgres(folder)
    try:
        yield pg
    finally:
        pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_stack(
    own_postgres: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """The e2e stack (FAST_SETTINGS, own Redis, process supervisor) on ``own_postgres``."""
    from shipway.db import engine_for
    from tests.conftest import _migrate, clean_up_rollouts

    admin = create_engine(own_postgres.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE shipway"))
    admin.dispose()
    database_url = own_postgres.url("shipway")
    _migrate(database_url, tmp_path)
    redis = start_redis(tmp_path / "redis")
    router_dir = _router_dir()
    settings = {
        **FAST_SETTINGS,
        "SHIPWAY_DATABASE_URL": database_url,
        "SHIPWAY_BROKER_URL": redis.url,
        "SHIPWAY_DATA_DIR": str(tmp_path / "data"),
        "SHIPWAY_ROUTER_DIR": str(router_dir),
        "SHIPWAY_MONITOR_INTERVAL_SECONDS": "0",
    }
    _use_settings(monkeypatch, settings)
    supervisor = Supervisor(log_dir=tmp_path / "logs")
    stack = Stack(settings=settings, supervisor=supervisor, redis=redis)
    try:
        yield stack
    finally:
        for worker in stack.workers:
            worker.kill()
        supervisor.stop_all()
        redis.stop()
        clean_up_rollouts(database_url, router_dir)
        engine_for(database_url).dispose()
        get_settings.cache_clear()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(supervisor.logs())


class Reader(threading.Thread):
    """Reads a job through the API every 100 ms; counts the answers."""

    def __init__(self, base_url: str, token: str, job_id: str) -> None:
        super().__init__(daemon=True, name="api-reader")
        self.url = f"{base_url}/api/v1/jobs/{job_id}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.answers: collections.Counter[str] = collections.Counter()
        self.bad: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopped.wait(0.1):
                try:
                    response = client.get(self.url, headers=self.headers)
                except httpx.HTTPError as error:
                    self.answers[type(error).__name__] += 1
                    self.bad.append(repr(error))
                    continue
                code = response.json().get("error", {}).get("code", "") if response.is_error else ""
                self.answers[f"{response.status_code} {code}".strip()] += 1
                if response.status_code != 200 and (response.status_code, code) != (
                    503,
                    "database_unavailable",
                ):
                    self.bad.append(f"{response.status_code} {response.text}")


def test_postgres_restart_during_jobs_recovers_without_manual_steps(
    pg_stack: Stack, own_postgres: Postgres, static_image: str, chaos_report: Any
) -> None:
    stack = pg_stack
    relay = stack.start_relay(wait=False)
    workers = [stack.start_worker(f"w{n}", concurrency=2, wait=False) for n in (1, 2)]
    api = stack.start_api()
    stack.wait_ready(relay, *workers)
    token = api_token("deployments:write")
    client = api.client(token)
    created = client.post("/api/v1/deployments", json={"name": unique("pg"), "kind": "static"})
    assert created.status_code == 201, created.text
    deployment_id = created.json()["id"]
    v1, v2, v3 = (seed_ready_version(deployment_id, image=static_image) for _ in range(3))
    first = _promote(client, deployment_id, v1)
    assert wait_for_job(first, timeout=120).state == "succeeded"

    workspace = workspace_id()
    noops = [enqueue_noop(workspace=workspace, seconds=4, steps=8) for _ in range(SCALE.pg_jobs)]
    rollout = _promote(client, deployment_id, v2)
    reader = Reader(api.base_url, token, rollout)
    reader.start()

    def running() -> int | None:
        rows = [_state(j) for j in [*noops, rollout]]
        count = sum(s == "running" for s in rows)
        return count if count >= 2 else None

    wait_until(running, timeout=60, interval=0.05, message="jobs never ran")
    started = time.monotonic()
    own_postgres.ctl("-m", "fast", "restart")
    restart_seconds = time.monotonic() - started

    jobs = wait_for_all([*noops, rollout], timeout=300 if FULL else 180)
    # The workers still consume and the API still accepts: a new promote and new jobs run.
    after = [enqueue_noop(workspace=workspace, seconds=0.2, steps=1) for _ in range(4)]
    latest = _promote(client, deployment_id, v3)
    later = wait_for_all([*after, latest], timeout=120)
    reader.stopped.set()
    reader.join(10)
    assert client.get("/readyz").status_code == 200

    assert_jobs_ran_cleanly(jobs + later)
    for job in jobs:
        if job.state != "succeeded":
            assert job.state == "failed" and job.failure_diagnostics, (job.id, job.state)
    assert [j.state for j in later] == ["succeeded"] * len(later)
    assert not reader.bad, reader.bad[:5]
    assert reader.answers["200"] > 0
    for service in [relay, *workers, api.service]:
        assert service.alive(), f"{service.name} died:\n{service.log_tail()}"
    page = httpx.get(_public_url(client, deployment_id), timeout=10)
    assert page.status_code == 200

    attempts = collections.Counter(j.attempts for j in jobs)
    chaos_report(
        f"chaos postgres restart: {len(jobs)} jobs in flight ({len(noops)} noop, 1 promote), "
        f"restart took {restart_seconds:.1f}s; jobs {describe_jobs(jobs)}; attempts "
        + ", ".join(f"{n} job(s) x{a}" for a, n in sorted(attempts.items()))
        + f"; API answers {dict(reader.answers)}; after: {len(later)} new jobs succeeded"
    )


def _promote(client: httpx.Client, deployment_id: str, version_id: str) -> str:
    response = client.post(
        f"/api/v1/deployments/{deployment_id}/versions/{version_id}/promote",
        json={"environment": "production"},
        headers={"Idempotency-Key": secrets.token_hex(8)},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job"]["id"])


def _state(job_id: str) -> str | None:
    from tests.e2e.helpers import get_job

    try:
        return get_job(job_id).state
    except Exception:
        return None


def _public_url(client: httpx.Client, deployment_id: str) -> str:
    response = client.get(f"/api/v1/deployments/{deployment_id}")
    assert response.status_code == 200, response.text
    env = next(e for e in response.json()["environments"] if e["name"] == "production")
    return str(env["public_url"])
