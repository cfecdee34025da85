"""Promote: validation, Idempotency-Key, serial queue, the rollout itself, cancel, concurrency."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import TokenFactory, VersionFactory, auth
from tests.support.services import free_port
from tests.test_api_auth import assert_error


def promote_url(deployment: dict[str, Any], version_id: str) -> str:
    return f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote"


def promote(
    client: TestClient,
    deployment: dict[str, Any],
    version_id: str,
    key: str,
    body: Any = None,
    **kwargs: Any,
) -> httpx.Response:
    return client.post(
        promote_url(deployment, version_id),
        json=body,
        headers=auth(deployment["token"], **{"Idempotency-Key": key}),
        **kwargs,
    )


def accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    return dict(response.json())


def counts(**where: Any) -> dict[str, int]:
    """Rows of releases, jobs, idempotency records and events (optionally filtered)."""
    from shipway.db import transaction
    from shipway.models import Event, IdempotencyRecord, Job, Release

    with transaction() as session:
        out = {}
        for model in (Release, Job, IdempotencyRecord, Event):
            query = select(func.count()).select_from(model)
            for column, value in where.items():
                if hasattr(model, column):
                    query = query.where(getattr(model, column) == value)
            out[model.__tablename__] = session.scalar(query) or 0
        return out


def get_job(client: TestClient, deployment: dict[str, Any], job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}", headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    return dict(response.json())


def get_version(
    client: TestClient, deployment: dict[str, Any], version_id: str, env: str = "production"
) -> dict[str, Any]:
    response = client.get(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}",
        params={"environment": env},
        headers=auth(deployment["token"]),
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def run(job_id: str) -> str | None:
    from shipway.jobs.runner import run_job

    return run_job(job_id)


# --------------------------------------------------------------------------- accept


def test_promote_ready_is_202_with_deploying_release_and_queued_job(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    body = accepted(promote(client, deployment, version_id, "k1", {"environment": "staging"}))
    assert set(body) == {"release", "job"}
    release, job = body["release"], body["job"]
    assert release["status"] == "DEPLOYING"
    assert release["environment"] == "staging"
    assert release["version_id"] == version_id
    assert release["deployment_id"] == deployment["id"]
    assert release["job_id"] == job["id"]
    assert release["deployed_at"] is None and release["replicas"] == 0
    assert job["state"] == "queued"
    assert job["queue"] == "rollouts"
    assert job["kind"] == "promote"
    assert job["release_id"] == release["id"]
    assert job["version_id"] == version_id
    assert job["environment"] == "staging"
    assert job["queue_position"] == 1
    assert job["actor"] == f"token:{deployment['token']['token_id']}"
    assert get_job(client, deployment, job["id"])["state"] == "queued"
    # The version itself is untouched until the rollout switches traffic.
    assert get_version(client, deployment, version_id)["state"] == "ready"
    assert get_version(client, deployment, version_id, "staging")["status"] == "DEPLOYING"


def test_archived_version_promotes_as_rollback(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "archived")
    job = accepted(promote(client, deployment, version_id, "rb"))["job"]
    assert job["kind"] == "rollback"
    assert job["queue"] == "rollouts"


def test_rollback_answers_its_place_in_line_like_promote(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    first = accepted(promote(client, deployment, make_version(deployment["id"], "ready"), "p1"))
    assert first["job"]["queue_position"] == 1
    archived = make_version(deployment["id"], "archived")
    response = client.post(
        f"/api/v1/deployments/{deployment['id']}/rollback",
        json={"to_version_id": archived},
        headers=auth(deployment["token"], **{"Idempotency-Key": "rb-line"}),
    )
    job = accepted(response)["job"]
    assert job["kind"] == "rollback"
    assert job["queue_position"] == 2  # behind the promote still queued
    # A replay answers the stored body, position included, and queues nothing more.
    again = client.post(
        f"/api/v1/deployments/{deployment['id']}/rollback",
        json={"to_version_id": archived},
        headers=auth(deployment["token"], **{"Idempotency-Key": "rb-line"}),
    )
    assert accepted(again)["job"] == job


@pytest.mark.parametrize("state", ["created", "building", "failed"])
def test_unpromotable_states_are_409_and_write_nothing(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory, state: str
) -> None:
    version_id = make_version(deployment["id"], state)
    before = counts()
    error = assert_error(promote(client, deployment, version_id, f"no-{state}"), 409)
    assert error["code"] == "version_not_promotable"
    assert error["details"]["state"] == state
    assert set(error["details"]["promotable_states"]) == {"ready", "archived"}
    assert counts() == before
    # Nothing was stored for the key either: the same key works once the version is fixed.
    ready = make_version(deployment["id"], "ready")
    assert promote(client, deployment, ready, f"no-{state}").status_code == 202


def test_promoting_the_active_version_again_is_409(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    job = accepted(promote(client, deployment, version_id, "first"))["job"]
    assert run(job["id"]) == "succeeded"
    error = assert_error(promote(client, deployment, version_id, "again"), 409)
    assert error["code"] == "version_already_active"


# --------------------------------------------------------------------------- request validation


def test_missing_or_bad_idempotency_key_is_400(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    before = counts()
    response = client.post(
        promote_url(deployment, version_id), json={}, headers=auth(deployment["token"])
    )
    error = assert_error(response, 400, "idempotency_key_required")
    assert "Idempotency-Key" in error["message"]
    assert_error(promote(client, deployment, version_id, "   "), 400, "idempotency_key_required")
    assert_error(promote(client, deployment, version_id, "k" * 256), 400, "idempotency_key_invalid")
    assert counts() == before


def test_same_key_same_body_replays_the_first_answer(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    first = accepted(promote(client, deployment, version_id, "same"))
    after_first = counts()
    # An empty body, {} and the explicit default are the same request.
    for body in (None, {}, {"environment": "production"}, None):
        again = promote(client, deployment, version_id, "same", body)
        assert again.status_code == 202
        assert again.json() == first
    assert counts() == after_first
    assert counts(version_id=version_id)["jobs"] == 1
    assert counts(version_id=version_id)["releases"] == 1
    # Replays do not run anything, even once the job has moved on.
    assert run(first["job"]["id"]) == "succeeded"
    assert promote(client, deployment, version_id, "same").json() == first


def test_same_key_other_body_is_422(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    other_version = make_version(deployment["id"], "ready")
    first = accepted(promote(client, deployment, version_id, "reuse"))
    before = counts()
    error = assert_error(
        promote(client, deployment, version_id, "reuse", {"environment": "staging"}),
        422,
        "idempotency_key_reused",
    )
    assert error["details"]["idempotency_key"] == "reuse"
    assert_error(promote(client, deployment, other_version, "reuse"), 422, "idempotency_key_reused")
    assert_error(
        promote(
            client,
            deployment,
            version_id,
            "reuse",
            {"strategy": {"type": "canary", "steps": [{"weight": 10}]}},
        ),
        422,
        "idempotency_key_reused",
    )
    assert counts() == before
    assert promote(client, deployment, version_id, "reuse").json() == first


def test_empty_body_defaults_to_production(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    bodies: tuple[dict[str, Any], ...] = ({}, {"content": b""}, {"json": {}}, {"json": None})
    for i, kwargs in enumerate(bodies):
        version_id = make_version(deployment["id"], "ready")
        response = client.post(
            promote_url(deployment, version_id),
            headers=auth(deployment["token"], **{"Idempotency-Key": f"empty-{i}"}),
            **kwargs,
        )
        body = accepted(response)
        assert body["release"]["environment"] == "production", kwargs
        assert body["job"]["environment"] == "production"
        assert body["release"]["rollout"]["strategy"] == {"type": "all_at_once"}


INVALID_BODIES: list[Any] = [
    {"environment": "Prod"},
    {"environment": "-prod"},
    {"environment": "prod-"},
    {"environment": "a" * 64},
    {"environment": ""},
    {"environment": "pro d"},
    {"environment": "prod/../x"},
    {"environment": 5},
    {"environment": None},
    {"environment": ["production"]},
    {"environment": "production", "unknown": 1},
    {"environment": "production", "strategy": "fast"},
    {"replicas": 3},
    [],
    "production",
    42,
]
MALFORMED_JSON = [b'{"environment": ', b"{'environment': 'x'}", b"{,}", b"\xff", b'{"a":1}}']


def test_invalid_body_is_422(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    before = counts()
    for body in INVALID_BODIES:
        response = promote(client, deployment, version_id, "bad-body", body)
        error = assert_error(response, 422, "validation_error")
        assert error["details"]["errors"], (body, error)
    assert counts() == before


def test_malformed_json_is_400(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    before = counts()
    for raw in MALFORMED_JSON:
        response = client.post(
            promote_url(deployment, version_id),
            content=raw,
            headers=auth(
                deployment["token"],
                **{"Idempotency-Key": "malformed", "Content-Type": "application/json"},
            ),
        )
        assert_error(response, 400, "malformed_json")
    assert counts() == before


# --------------------------------------------------------------------------- queue and rollout


def test_second_promote_waits_in_line(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    v1, v2 = make_version(deployment["id"], "ready"), make_version(deployment["id"], "ready")
    j1 = accepted(promote(client, deployment, v1, "q1"))["job"]
    j2 = accepted(promote(client, deployment, v2, "q2"))["job"]
    assert j2["queue_position"] == 2
    assert get_job(client, deployment, j1["id"])["queue_position"] == 1
    assert get_job(client, deployment, j2["id"])["queue_position"] == 2
    # Another environment has its own line.
    v3 = make_version(deployment["id"], "ready")
    j3 = accepted(promote(client, deployment, v3, "q3", {"environment": "staging"}))["job"]
    assert get_job(client, deployment, j3["id"])["queue_position"] == 1
    # The second may not run before the first.
    assert run(j2["id"]) is None
    assert get_job(client, deployment, j2["id"])["state"] == "queued"
    assert run(j1["id"]) == "succeeded"
    assert get_job(client, deployment, j1["id"])["queue_position"] is None
    assert get_job(client, deployment, j2["id"])["queue_position"] == 1
    assert run(j2["id"]) == "succeeded"


def test_rollout_activates_then_replaces_then_rolls_back(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    v1, v2 = make_version(deployment["id"], "ready"), make_version(deployment["id"], "ready")
    first = accepted(promote(client, deployment, v1, "r1"))
    assert run(first["job"]["id"]) == "succeeded"

    job = get_job(client, deployment, first["job"]["id"])
    assert job["state"] == "succeeded" and job["finished_at"] and job["attempts"] == 1
    assert job["result"]["release_id"] == first["release"]["id"]
    row = get_version(client, deployment, v1)
    assert row["status"] == "ACTIVE" and row["state"] == "ready"
    assert row["deployed_at"] and row["promoted_at"]
    deployed = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()
    production = next(e for e in deployed["environments"] if e["name"] == "production")
    assert production["active_version_id"] == v1
    assert production["release_id"] == first["release"]["id"]
    assert production["status"] == "ACTIVE"

    second = accepted(promote(client, deployment, v2, "r2"))
    assert get_version(client, deployment, v1)["status"] == "ACTIVE"  # untouched while queued
    assert run(second["job"]["id"]) == "succeeded"
    old = get_version(client, deployment, v1)
    assert old["state"] == "archived"
    assert old["status"] == "RETIRED"
    assert old["retired_at"] and old["replicas"] == 0
    new = get_version(client, deployment, v2)
    assert new["status"] == "ACTIVE" and new["state"] == "ready"
    assert new["deployed_at"] and new["promoted_at"]
    assert second["job"]["id"] in {
        e["job_id"] for e in audit(client, deployment) if e["subject_id"] == first["release"]["id"]
    }
    transitions = [
        (e["from_state"], e["to_state"])
        for e in audit(client, deployment)
        if e["subject_id"] == first["release"]["id"]
    ]
    assert transitions == [
        (None, "DEPLOYING"),
        ("DEPLOYING", "ACTIVE"),
        ("ACTIVE", "DRAINING"),
        ("DRAINING", "RETIRED"),
    ]

    # Rolling back to v1 (archived) goes through the same path.
    back = accepted(promote(client, deployment, v1, "r3"))
    assert back["job"]["kind"] == "rollback"
    assert run(back["job"]["id"]) == "succeeded"
    restored = get_version(client, deployment, v1)
    assert restored["status"] == "ACTIVE"
    assert restored["rollback_count"] == 1 and restored["last_rollback_at"]
    left = get_version(client, deployment, v2)
    assert left["status"] == "ROLLED_BACK" and left["rolled_back_at"]
    assert left["state"] == "archived"


def audit(client: TestClient, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.get(
        f"/api/v1/deployments/{deployment['id']}/events",
        params={"limit": 500},
        headers=auth(deployment["token"]),
    )
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_cancel_queued_promote_fails_its_release(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    v1, v2 = make_version(deployment["id"], "ready"), make_version(deployment["id"], "ready")
    first = accepted(promote(client, deployment, v1, "c1"))
    second = accepted(promote(client, deployment, v2, "c2"))
    response = client.post(
        f"/api/v1/jobs/{first['job']['id']}/cancel", headers=auth(deployment["token"])
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "cancelled"
    assert job["failure_reason"] == "cancelled"
    assert job["finished_at"] and job["cancel_requested"] is True
    assert job["queue_position"] is None
    release = get_version(client, deployment, v1)
    assert release["status"] == "FAILED"
    assert release["failure_reason"] == "cancelled"
    assert {"title", "description", "action"} <= set(release["failure_diagnostics"])
    assert release["replicas"] == 0
    # The cancelled job never runs; the next in line moves up.
    assert run(first["job"]["id"]) is None
    assert get_job(client, deployment, second["job"]["id"])["queue_position"] == 1
    # Cancelling again, or cancelling a finished job, is a conflict and changes nothing.
    before = counts()
    again = client.post(
        f"/api/v1/jobs/{first['job']['id']}/cancel", headers=auth(deployment["token"])
    )
    assert_error(again, 409, "job_not_cancellable")
    assert counts() == before
    assert run(second["job"]["id"]) == "succeeded"
    before = counts()
    done = client.post(
        f"/api/v1/jobs/{second['job']['id']}/cancel", headers=auth(deployment["token"])
    )
    error = assert_error(done, 409, "job_not_cancellable")
    assert error["details"]["state"] == "succeeded"
    assert counts() == before
    assert get_version(client, deployment, v2)["status"] == "ACTIVE"


# --------------------------------------------------------------------------- concurrency (PG)


@contextmanager
def live_server() -> Iterator[str]:
    """A real uvicorn server (in a thread) for the configured database."""
    import uvicorn

    from shipway.api import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def hammer(n: int, call: Any) -> list[Any]:
    """Run ``call(i)`` in ``n`` threads released at the same instant."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except BaseException as error:  # reported below
            results[i] = error

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    return results


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_identical_promotes_make_one_job(
    deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    with live_server() as base:

        def call(_i: int) -> tuple[int, Any]:
            with httpx.Client(base_url=base, timeout=60) as http:
                response = http.post(
                    promote_url(deployment, version_id),
                    json={"environment": "production"},
                    headers=auth(deployment["token"], **{"Idempotency-Key": "storm"}),
                )
                return response.status_code, response.json()

        answers = hammer(50, call)
    statuses = {status for status, _ in answers}
    assert statuses == {202}, [b for s, b in answers if s != 202][:3]
    bodies = [body for _, body in answers]
    assert all(body == bodies[0] for body in bodies)
    assert counts(version_id=version_id)["jobs"] == 1
    assert counts(version_id=version_id)["releases"] == 1
    assert counts(workspace_id=deployment["workspace_id"])["idempotency_records"] == 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_create_version_numbers_are_gapless(deployment: dict[str, Any]) -> None:
    from shipway.catalog.models import Deployment, Version
    from shipway.db import transaction
    from shipway.versions.service import create_version

    class Abandon(Exception):
        pass

    def call(i: int) -> int | None:
        try:
            with transaction() as session:
                row = session.get(Deployment, deployment["id"])
                assert row is not None
                version = create_version(session, deployment=row, actor=f"t{i}")
                number = version.version_number
                if i >= 20:  # a publish that fails after taking a number gives it back
                    raise Abandon
                return number
        except Abandon:
            return None

    numbers = [n for n in hammer(25, call) if n is not None]
    assert sorted(numbers) == list(range(1, 21))
    with transaction() as session:
        stored = session.scalars(
            select(Version.version_number).where(Version.deployment_id == deployment["id"])
        ).all()
        assert sorted(stored) == list(range(1, 21))
        row = session.get(Deployment, deployment["id"])
        assert row is not None and row.latest_version_number == 20


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_publishes_over_http_are_numbered_1_to_n(deployment: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("index.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    archive = buffer.getvalue()
    with live_server() as base:

        def call(i: int) -> tuple[int, Any]:
            with httpx.Client(base_url=base, timeout=60) as http:
                response = http.post(
                    f"/api/v1/deployments/{deployment['id']}/versions",
                    files={"source": ("s.tar.gz", archive, "application/gzip")},
                    headers=auth(deployment["token"], **{"Idempotency-Key": f"pub-{i}"}),
                )
                return response.status_code, response.json()

        answers = hammer(20, call)
    assert {s for s, _ in answers} == {202}, answers[:2]
    numbers = sorted(body["version"]["version_number"] for _, body in answers)
    assert numbers == list(range(1, 21))
    assert len({body["job"]["id"] for _, body in answers}) == 20


def test_workspaces_have_their_own_idempotency_keys(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    make_token: TokenFactory,
) -> None:
    mine = make_version(deployment["id"], "ready")
    other_token = make_token("deployments:write", workspace="globex")
    other = client.post(
        "/api/v1/deployments", json={"name": "g", "kind": "static"}, headers=auth(other_token)
    ).json()
    theirs = make_version(other["id"], "ready")
    a = accepted(promote(client, deployment, mine, "shared-key"))
    b = accepted(promote(client, {**other, "token": other_token}, theirs, "shared-key"))
    assert a["job"]["id"] != b["job"]["id"]
