"""GET /api/v1/queue: depth and age, running, workers, stuck jobs, failures, rollouts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from shipway.config import get_settings
from shipway.ids import utcnow
from tests.conftest import TokenFactory, auth
from tests.support import seed
from tests.test_api_auth import assert_error


def view(client: TestClient, token: dict[str, str]) -> dict[str, Any]:
    response = client.get("/api/v1/queue", headers=auth(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def by_name(items: list[dict[str, Any]], key: str = "name") -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def test_depth_and_oldest_age_per_queue(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:read")
    ws = token["workspace_id"]
    oldest = seed.enqueue(ws)
    seed.set_columns(oldest, created_at=seed.ago(120))
    seed.enqueue(ws)
    seed.enqueue(ws, not_before=utcnow() + timedelta(hours=1))  # delayed: not in depth
    due_lately = seed.enqueue(ws, not_before=seed.ago(10))  # claimable for 10 s only
    seed.set_columns(due_lately, created_at=seed.ago(3600))
    build = seed.enqueue(ws, kind="publish")
    seed.set_columns(build, created_at=seed.ago(30))
    seed.ended(ws)  # finished jobs are in no queue
    other = make_token("deployments:read", workspace="other")
    seed.enqueue(other["workspace_id"])  # another workspace's job
    seed.set_columns(seed.enqueue(other["workspace_id"]), created_at=seed.ago(999))

    before = utcnow()
    body = view(client, token)
    generated = parse_time(body["generated_at"])
    assert before <= generated <= utcnow()
    assert body["workspace_id"] == ws
    queues = by_name(body["queues"])
    assert set(queues) == {"builds", "rollouts"}
    rollouts = queues["rollouts"]
    assert (rollouts["depth"], rollouts["delayed"], rollouts["running"]) == (3, 1, 0)
    assert rollouts["oldest_job_id"] == oldest
    assert 120 <= rollouts["oldest_queued_age_seconds"] < 120 + 600
    builds = queues["builds"]
    assert (builds["depth"], builds["delayed"], builds["oldest_job_id"]) == (1, 0, build)
    assert 30 <= builds["oldest_queued_age_seconds"] < 120

    assert view(client, other)["queues"][1]["depth"] == 2  # each workspace sees its own


def test_a_delayed_job_counts_its_age_from_when_it_became_due(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("deployments:read")
    ws = token["workspace_id"]
    recent = seed.enqueue(ws)
    seed.set_columns(recent, created_at=seed.ago(120))
    delayed = seed.enqueue(ws, not_before=seed.ago(300))
    seed.set_columns(delayed, created_at=seed.ago(3600))

    rollouts = by_name(view(client, token)["queues"])["rollouts"]
    assert rollouts["oldest_job_id"] == delayed
    assert 300 <= rollouts["oldest_queued_age_seconds"] < 3600


def test_empty_queue_has_no_age(client: TestClient, make_token: TokenFactory) -> None:
    body = view(client, make_token("deployments:read"))
    for stats in body["queues"]:
        assert stats["depth"] == 0
        assert stats["oldest_queued_age_seconds"] is None
        assert stats["oldest_job_id"] is None
    assert body["running"] == body["stuck"] == body["failures_last_hour"] == body["rollouts"] == []


def test_running_jobs_grouped_by_kind_and_phase(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("deployments:read")
    ws = token["workspace_id"]
    worker_id = seed.worker("host-a", 4242)
    a, b, c = (seed.enqueue(ws) for _ in range(3))
    build = seed.enqueue(ws, kind="publish")
    owner_a = seed.start(a, seed.owner("host-a", 4242))
    seed.phase(a, owner_a, "sleep", step=1, steps=4)
    seed.set_columns(a, started_at=seed.ago(30))
    seed.phase(b, seed.start(b, seed.owner("host-b", 7)), "sleep")
    seed.start(c, seed.owner("host-c", 8))  # no phase yet
    seed.phase(build, seed.start(build, seed.owner("host-d", 9)), "build")

    body = view(client, token)
    groups = {(g["kind"], g["phase"]): g for g in body["running"]}
    assert set(groups) == {("noop", "sleep"), ("noop", None), ("publish", "build")}
    sleep = groups[("noop", "sleep")]
    assert sleep["count"] == 2
    jobs = {j["id"]: j for j in sleep["jobs"]}
    assert set(jobs) == {a, b}
    assert jobs[a]["elapsed_seconds"] >= 30
    assert jobs[a]["progress"] == {"step": 1, "steps": 4}
    assert jobs[a]["lease_owner"] == owner_a
    assert jobs[a]["attempt"] == 1
    # The lease owner hostname/pid maps to the registered worker row.
    assert jobs[a]["worker"] is not None
    assert (jobs[a]["worker"]["id"], jobs[a]["worker"]["alive"]) == (worker_id, True)
    assert jobs[b]["worker"] is None  # no worker row for host-b/7
    assert [j["id"] for j in groups[("noop", None)]["jobs"]] == [c]
    queues = by_name(body["queues"])
    assert (queues["rollouts"]["running"], queues["builds"]["running"]) == (3, 1)
    assert queues["rollouts"]["depth"] == 0


def test_stuck_jobs_each_with_a_reason(
    client: TestClient, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPWAY_STUCK_AFTER_SECONDS", "60")
    get_settings.cache_clear()
    token = make_token("deployments:read")
    ws = token["workspace_id"]
    lost = seed.enqueue(ws)
    lost_owner = seed.start(lost)
    seed.set_columns(lost, lease_expires_at=seed.ago(5))
    overdue_running = seed.enqueue(ws)
    seed.start(overdue_running)
    seed.set_columns(overdue_running, deadline_at=seed.ago(10))
    overdue_queued = seed.enqueue(ws, deadline_seconds=3600)
    seed.set_columns(overdue_queued, deadline_at=seed.ago(1))
    waiting_long = seed.enqueue(ws)
    seed.set_columns(waiting_long, created_at=seed.ago(61))
    # Not stuck: fresh, healthy running, long-delayed job that only just became due.
    seed.enqueue(ws)
    seed.start(seed.enqueue(ws))
    due_lately = seed.enqueue(ws, not_before=seed.ago(30))
    seed.set_columns(due_lately, created_at=seed.ago(3600))
    seed.set_columns(seed.ended(ws, "failed", failure_reason="x"), deadline_at=seed.ago(5))

    body = view(client, token)
    assert body["stuck_after_seconds"] == 60
    stuck = {s["id"]: s for s in body["stuck"]}
    assert {k: v["stuck_reason"] for k, v in stuck.items()} == {
        lost: "lease_expired",
        overdue_running: "deadline_passed",
        overdue_queued: "deadline_passed",
        waiting_long: "queued_too_long",
    }
    assert stuck[lost]["lease_owner"] == lost_owner
    assert stuck[lost]["state"] == "running"
    assert 5 <= stuck[lost]["stuck_for_seconds"] < 600
    assert stuck[overdue_queued]["state"] == "queued"
    assert 1 <= stuck[waiting_long]["stuck_for_seconds"] < 600
    for item in stuck.values():
        assert parse_time(item["stuck_since"]) <= parse_time(body["generated_at"])


def test_failures_of_the_last_hour_grouped_by_reason(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("deployments:read")
    ws = token["workspace_id"]
    first = seed.ended(ws, "failed", kind="publish", failure_reason="build_failed")
    seed.set_columns(first, finished_at=seed.ago(600))
    latest = seed.ended(ws, "failed", kind="publish", failure_reason="build_failed")
    seed.set_columns(latest, finished_at=seed.ago(60))
    lost = seed.ended(ws, "failed", failure_reason="worker_lost")
    old = seed.ended(ws, "failed", failure_reason="worker_lost")
    seed.set_columns(old, finished_at=seed.ago(2 * 3600))  # outside the hour
    seed.ended(ws, "cancelled", failure_reason="cancelled")  # not a failure
    seed.ended(ws, "succeeded")
    other = make_token("deployments:read", workspace="other")["workspace_id"]
    seed.ended(other, "failed", failure_reason="build_failed")

    body = view(client, token)
    failures = by_name(body["failures_last_hour"], "failure_reason")
    assert set(failures) == {"build_failed", "worker_lost"}
    assert (failures["build_failed"]["count"], failures["build_failed"]["latest_job_id"]) == (
        2,
        latest,
    )
    assert (failures["worker_lost"]["count"], failures["worker_lost"]["latest_job_id"]) == (1, lost)
    assert body["failures_last_hour"][0]["failure_reason"] == "build_failed"  # most first
    finished = parse_time(failures["build_failed"]["latest_finished_at"])
    assert seed.ago(61 + 600) < finished < seed.ago(59)


def test_rollouts_per_deployment_environment_with_positions(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("deployments:read")
    ws = token["workspace_id"]

    def rollout(environment: str) -> str:
        return seed.enqueue(
            ws,
            kind="promote",
            deployment_id="dep_a",
            environment=environment,
            serial_key=f"dep_a:{environment}",
        )

    running = rollout("production")
    seed.start(running)
    second, third = rollout("production"), rollout("production")
    retire = seed.enqueue(
        ws,
        kind="retire",
        deployment_id="dep_a",
        environment="production",
        serial_key="dep_a:production",
        not_before=utcnow() + timedelta(minutes=5),
    )
    fourth = rollout("production")
    staging = rollout("staging")
    seed.enqueue(ws)  # no serial key: not a rollout line

    body = view(client, token)
    lines = {(x["deployment_id"], x["environment"]): x for x in body["rollouts"]}
    assert set(lines) == {("dep_a", "production"), ("dep_a", "staging")}
    production = lines[("dep_a", "production")]
    assert production["running"]["id"] == running
    assert production["running"]["position"] is None
    positions = [(w["id"], w["position"]) for w in production["waiting"]]
    assert positions == [(second, 2), (third, 3), (retire, 4), (fourth, 4)]
    assert production["waiting"][2]["not_before"] is not None
    assert lines[("dep_a", "staging")]["running"] is None
    assert [(w["id"], w["position"]) for w in lines[("dep_a", "staging")]["waiting"]] == [
        (staging, 1)
    ]
    # The same numbers as GET /jobs/{id}.
    for job_id, position in positions:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(token)).json()
        assert job["queue_position"] == position, job_id


def test_admin_sees_every_worker_readers_see_a_summary(
    client: TestClient, make_token: TokenFactory
) -> None:
    admin = make_token("admin")
    reader = make_token("deployments:read")
    ws = admin["workspace_id"]
    ours = seed.enqueue(ws)
    seed.start(ours, seed.owner("host-a", 1))
    foreign_ws = make_token("deployments:read", workspace="other")["workspace_id"]
    theirs = seed.enqueue(foreign_ws)
    seed.start(theirs, seed.owner("host-b", 2))
    busy_ours = seed.worker("host-a", 1, current_job_id=ours)
    busy_theirs = seed.worker("host-b", 2, current_job_id=theirs, queues=("builds",))
    idle = seed.worker("host-c", 3)
    silent = seed.worker("host-d", 4, heartbeat_age=60)  # older than 3 heartbeats of 5 s
    stopped = seed.worker("host-e", 5, stopped=True)
    seed.worker("host-f", 6, heartbeat_age=2 * 3600)  # gone for long: not shown

    body = view(client, admin)
    assert body["workers_summary"]["alive"] == 3
    assert body["workers_summary"]["dead"] == 2
    assert body["workers_summary"]["alive_after_seconds"] == 3 * get_settings().heartbeat_seconds
    workers = {w["id"]: w for w in body["workers"]}
    assert set(workers) == {busy_ours, busy_theirs, idle, silent, stopped}
    assert [w["alive"] for w in body["workers"]] == [True, True, True, False, False]
    assert (workers[busy_ours]["current_job_id"], workers[busy_ours]["busy"]) == (ours, True)
    # Another workspace's job id is not shown, only that the worker is busy.
    assert (workers[busy_theirs]["current_job_id"], workers[busy_theirs]["busy"]) == (None, True)
    assert workers[busy_theirs]["queues"] == ["builds"]
    assert (workers[idle]["busy"], workers[idle]["alive"]) == (False, True)
    assert workers[silent]["heartbeat_age_seconds"] >= 60
    assert workers[stopped]["stopped_at"] is not None
    assert (workers[idle]["hostname"], workers[idle]["pid"]) == ("host-c", 3)

    as_reader = view(client, reader)
    assert as_reader["workers"] is None
    assert as_reader["workers_summary"] == body["workers_summary"]
    # ... but the worker of its own running job is shown with that job.
    (group,) = as_reader["running"]
    assert group["jobs"][0]["worker"]["id"] == busy_ours


def test_queue_needs_a_token(client: TestClient) -> None:
    assert_error(client.get("/api/v1/queue"), 401, "unauthenticated")
    bad = {"Authorization": "Bearer shw_nope"}
    assert_error(client.get("/api/v1/queue", headers=bad), 401)


def test_queue_is_documented_with_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/api/v1/queue"]["get"]
    assert {"200", "401", "403"} <= set(operation["responses"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/QueueView")
    error = operation["responses"]["401"]["content"]["application/json"]["schema"]
    assert error["$ref"] == "#/components/schemas/ErrorResponse"
    fields = spec["components"]["schemas"]["QueueView"]["properties"]
    assert {
        "generated_at",
        "queues",
        "running",
        "workers",
        "workers_summary",
        "stuck",
        "failures_last_hour",
        "rollouts",
    } <= set(fields)


# --------------------------------------------------------------------------- query plans


@contextmanager
def captured_statements() -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement the configured engine runs inside the block."""
    from shipway.db import get_engine

    engine = get_engine()
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def full_scans_of_jobs(statement: str, parameters: Any) -> list[str]:
    """Plan steps reading the jobs table other than through an index range on ``state``
    (or on ``finished_at``, for the windows of finished jobs).

    Every query filters on a job state; an index whose condition does not include it
    (say ``workspace_id`` alone) reads all of a workspace's jobs, ever.
    """
    from shipway.db import get_engine

    engine = get_engine()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            steps = [row[-1] for row in rows if re.search(r"\b(SCAN|SEARCH) jobs\b", row[-1])]
            bounded = r"^SEARCH jobs .*\(.*\b(state=|finished_at[<>])"
            return [s for s in steps if not re.search(bounded, s)]
        conn.execute(text("SET enable_seqscan = off"))  # tiny tables: judge the access paths
        (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).one()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    bad: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "jobs":
            conditions = [node.get("Index Cond") or ""] + [
                child.get("Index Cond") or "" for child in node.get("Plans", [])
            ]
            if not any(re.search(r"\b(state|finished_at)\b", c) for c in conditions):
                bad.append(f"{node['Node Type']} on jobs ({node.get('Index Name')}): {conditions}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return bad


def seed_everything(ws: str) -> None:
    seed.worker("host-a", 1)
    seed.start(seed.enqueue(ws, serial_key="d:p", deployment_id="d", environment="p"))
    seed.enqueue(ws, serial_key="d:p", deployment_id="d", environment="p")
    seed.enqueue(ws, kind="publish")
    seed.ended(ws, "failed", failure_reason="build_failed")
    seed.ended(ws, "succeeded")


def test_every_queue_view_query_reads_jobs_through_an_index(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("admin")
    seed_everything(token["workspace_id"])
    with captured_statements() as statements:
        view(client, token)
    job_queries = [(s, p) for s, p in statements if re.search(r"\bFROM jobs\b", s)]
    assert len(job_queries) >= 7  # counts, oldest (per queue), running, stuck, failures, rollouts
    for statement, parameters in job_queries:
        assert full_scans_of_jobs(statement, parameters) == [], statement


def test_the_plan_check_flags_a_full_scan(client: TestClient, make_token: TokenFactory) -> None:
    """The check above can fail: a filter no index serves is reported."""
    token = make_token("admin")
    assert full_scans_of_jobs("SELECT id FROM jobs WHERE actor = 'x'", {}) != []
    by_workspace_only = f"SELECT id FROM jobs WHERE workspace_id = '{token['workspace_id']}'"
    assert full_scans_of_jobs(by_workspace_only + " AND state = 'queued'", {}) == []
    assert full_scans_of_jobs(by_workspace_only + " ORDER BY created_at", {}) != []
