"""Signed webhooks against a real HTTP receiver on loopback (SHIPWAY_WEBHOOK_ALLOW_PRIVATE on).

Deliveries come from real transitions (the services' own state machine, and a real
rollout run by the job runner); the receiver checks every signature with the Standard
Webhooks algorithm written in tests/support/webhook_receiver.py and with the
``standardwebhooks`` reference library. Waits are conditions with deadlines.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from shipway.config import get_settings
from tests.conftest import TokenFactory, VersionFactory, auth
from tests.support.processes import wait_until
from tests.support.webhook_receiver import Receiver, running_receiver, verify
from tests.test_api_auth import assert_error

# SQLite unless said otherwise (the outbox's locking and the rollout also on PostgreSQL).
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
POSTGRES = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
def hooks(shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Webhook settings for tests: loopback allowed, fast backoff, short timeout."""
    settings = {
        "SHIPWAY_WEBHOOK_ALLOW_PRIVATE": "true",
        "SHIPWAY_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "SHIPWAY_WEBHOOK_TIMEOUT_SECONDS": "1",
        "SHIPWAY_WEBHOOK_MAX_ATTEMPTS": "4",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("shipway.webhooks.delivery.STUCK_SCAN_SECONDS", 0.0)
    get_settings.cache_clear()
    return settings


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


@pytest.fixture
def admin(hooks: dict[str, str], make_token: TokenFactory) -> dict[str, str]:
    return make_token("admin")


def create(client: TestClient, admin: dict[str, str], url: str, *types: str) -> dict[str, Any]:
    response = client.post(
        "/api/v1/webhooks",
        json={"url": url, "event_types": list(types or ("version.ready", "version.failed"))},
        headers=auth(admin),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def deliveries(client: TestClient, admin: dict[str, str], webhook_id: str) -> list[Any]:
    response = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=auth(admin))
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def pump_until(probe: Any, *, timeout: float = 15.0, message: str = "") -> Any:
    """Run webhook passes (as the relay lane does) until ``probe`` holds."""
    from shipway.webhooks.delivery import webhooks_pass

    def step() -> Any:
        webhooks_pass()
        return probe()

    return wait_until(step, timeout=timeout, interval=0.05, message=message or "condition")


def new_deployment(client: TestClient, admin: dict[str, str], name: str = "site") -> str:
    created = client.post(
        "/api/v1/deployments", json={"name": name, "kind": "static"}, headers=auth(admin)
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def promote(client: TestClient, admin: dict[str, str], dep: str, version: str, **body: Any) -> Any:
    """A promote through the API (202), its answer."""
    answer = client.post(
        f"/api/v1/deployments/{dep}/versions/{version}/promote",
        json=body or None,
        headers=auth(admin, **{"Idempotency-Key": f"k-{version}-{body}"}),
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


# --------------------------------------------------------------------------- the API


@SQLITE
def test_create_shows_the_secret_once_and_manages_the_endpoint(
    client: TestClient, admin: dict[str, str], make_token: TokenFactory
) -> None:
    made = create(client, admin, "http://127.0.0.1:9/hook", "release.active", "version.ready")
    assert made["secret"].startswith("whsec_") and made["id"].startswith("whk_")
    assert made["event_types"] == ["version.ready", "release.active"]  # catalog order
    one = client.get(f"/api/v1/webhooks/{made['id']}", headers=auth(admin)).json()
    assert "secret" not in one and made["secret"] not in json.dumps(one)
    listed = client.get("/api/v1/webhooks", headers=auth(admin)).json()["data"]
    assert [row["id"] for row in listed] == [made["id"]]
    assert made["secret"] not in json.dumps(listed)

    changed = client.patch(
        f"/api/v1/webhooks/{made['id']}",
        json={"enabled": False, "event_types": ["job.stuck"]},
        headers=auth(admin),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False and changed.json()["event_types"] == ["job.stuck"]
    bad = client.patch(
        f"/api/v1/webhooks/{made['id']}", json={"event_types": ["no.such"]}, headers=auth(admin)
    )
    assert_error(bad, 422, "validation_error")

    # The secret is stored encrypted: not in the database as plain text.
    from sqlalchemy import text

    from shipway.db import transaction

    with transaction() as session:
        stored = session.execute(text("SELECT secret FROM webhook_endpoints")).scalar_one()
    assert stored.startswith("gAAAAA") and made["secret"] not in stored

    # Read and write tokens cannot see or manage webhooks (their URLs may hold tokens).
    for scope in ("deployments:read", "deployments:write"):
        other = make_token(scope)
        assert_error(client.get("/api/v1/webhooks", headers=auth(other)), 403, "insufficient_scope")

    gone = client.delete(f"/api/v1/webhooks/{made['id']}", headers=auth(admin))
    assert gone.status_code == 200 and gone.json()["id"] == made["id"]
    missing = client.get(f"/api/v1/webhooks/{made['id']}", headers=auth(admin))
    assert_error(missing, 404, "not_found")


@SQLITE
def test_private_destinations_are_refused_without_the_setting(
    client: TestClient, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPWAY_WEBHOOK_ALLOW_PRIVATE", "false")
    get_settings.cache_clear()
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://[::1]/x",
        "http://10.0.0.5/x",
        "http://169.254.169.254/",
        "http://[fd00::1]/x",
        "http://localhost/x",
    ):
        response = client.post(
            "/api/v1/webhooks",
            json={"url": url, "event_types": ["version.ready"]},
            headers=auth(admin),
        )
        error = assert_error(response, 422, "webhook_destination_refused")
        assert "SHIPWAY_WEBHOOK_ALLOW_PRIVATE" in error["message"], error
    made = create(client, admin, "https://93.184.216.34/hook")
    moved = client.patch(
        f"/api/v1/webhooks/{made['id']}", json={"url": "http://192.168.0.10/"}, headers=auth(admin)
    )
    assert_error(moved, 422, "webhook_destination_refused")
    assert client.get("/api/v1/webhooks", headers=auth(admin)).json()["data"][0]["url"] == (
        "https://93.184.216.34/hook"
    )


# --------------------------------------------------------------------------- deliveries


def test_version_transitions_are_delivered_signed(
    client: TestClient,
    admin: dict[str, str],
    receiver: Receiver,
    make_version: VersionFactory,
    make_token: TokenFactory,
) -> None:
    made = create(client, admin, receiver.url, "version.ready", "version.failed")
    other_ws = make_token("admin", workspace="globex")
    create(client, other_ws, receiver.url, "version.ready")  # sees none of acme's events
    dep = new_deployment(client, admin)
    ready = make_version(dep, "ready", runtime_image="shipway-test/none:1")
    failed = make_version(dep, "failed")
    make_version(dep, "building")  # no event type for created/building

    pump_until(lambda: len(receiver.received) >= 2, message="two deliveries")
    bodies = {json.loads(r.body)["type"]: r for r in receiver.received}
    assert set(bodies) == {"version.ready", "version.failed"}
    for request in receiver.received:
        assert verify(made["secret"], request.headers, request.body)
        Webhook(made["secret"]).verify(request.body, request.headers)
        assert request.headers["content-type"] == "application/json"
    ready_data = json.loads(bodies["version.ready"].body)
    assert ready_data["data"]["version_id"] == ready
    assert ready_data["data"]["deployment_id"] == dep
    assert ready_data["data"]["version_number"] == 1
    assert ready_data["timestamp"].endswith("Z")
    assert json.loads(bodies["version.failed"].body)["data"]["version_id"] == failed

    # The receiver has the requests before their sender records the answers: wait for both.
    def recorded() -> list[dict[str, Any]] | None:
        log = deliveries(client, admin, made["id"])
        return log if {row["state"] for row in log} == {"succeeded"} else None

    log = pump_until(recorded, message="both deliveries recorded as succeeded")
    assert all(row["attempt_log"][0]["status_code"] == 200 for row in log)
    assert {row["id"] for row in log} == {r.headers["webhook-id"] for r in receiver.received}
    assert len(receiver.received) == 2  # nothing for globex's endpoint


@SQLITE
def test_failing_endpoint_is_retried_with_backoff_and_logged(
    client: TestClient, admin: dict[str, str], receiver: Receiver, make_version: VersionFactory
) -> None:
    receiver.answers = [500, 503, "hang"]  # then 200; the hang outlasts the 1 s timeout
    made = create(client, admin, receiver.url, "version.failed")
    make_version(new_deployment(client, admin), "failed")

    def delivered() -> Any:
        log = deliveries(client, admin, made["id"])
        return log if log and log[0]["state"] == "succeeded" else None

    log = pump_until(delivered, timeout=30, message="a delivery after two 5xx and a timeout")
    receiver.release()
    attempts = log[0]["attempt_log"]
    assert [a["status_code"] for a in attempts] == [500, 503, None, 200]
    assert attempts[0]["response_body"] == "answer 500" and attempts[0]["outcome"] == "failed"
    assert "Timeout" in attempts[2]["error"] and attempts[3]["outcome"] == "succeeded"
    assert log[0]["last_status_code"] == 200
    # The same webhook-id every time, a fresh timestamp and signature; gaps grow.
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {log[0]["id"]}
    times = [r.at for r in receiver.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps  # 0.2 s, then 0.4 s (±10 %)
    for request in receiver.received:
        assert verify(made["secret"], request.headers, request.body)
    metrics = client.get("/metrics").text
    assert 'shipway_webhook_attempts_total{outcome="failed"} 3.0' in metrics
    assert 'shipway_webhook_attempts_total{outcome="succeeded"} 1.0' in metrics
    assert 'shipway_webhook_deliveries{state="succeeded"} 1.0' in metrics


@SQLITE
def test_gives_up_after_max_attempts_then_redelivers_through_the_api(
    client: TestClient, admin: dict[str, str], receiver: Receiver, make_version: VersionFactory
) -> None:
    receiver.default = 500
    made = create(client, admin, receiver.url, "version.ready")
    make_version(new_deployment(client, admin), "ready", runtime_image="shipway-test/none:1")

    def given_up() -> Any:
        log = deliveries(client, admin, made["id"])
        return log if log and log[0]["state"] == "failed" else None

    log = pump_until(given_up, timeout=30, message="the delivery given up")
    assert [a["status_code"] for a in log[0]["attempt_log"]] == [500] * 4  # MAX_ATTEMPTS
    assert log[0]["next_attempt_at"] is None and len(receiver.received) == 4

    receiver.default = 204
    url = f"/api/v1/webhooks/{made['id']}/deliveries/{log[0]['id']}/redeliver"
    again = client.post(url, headers=auth(admin))
    assert again.status_code == 202, again.text
    assert again.json()["state"] == "pending" and again.json()["attempts"] == 0
    redone = pump_until(
        lambda: (lambda row: row if row["state"] == "succeeded" else None)(
            deliveries(client, admin, made["id"])[0]
        ),
        message="the redelivery",
    )
    assert [a["trigger"] for a in redone["attempt_log"]] == ["auto"] * 4 + ["redeliver"]
    assert redone["attempt_log"][-1]["status_code"] == 204
    assert receiver.received[-1].headers["webhook-id"] == log[0]["id"]
    assert receiver.received[-1].body == receiver.received[0].body
    unknown = client.post(
        f"/api/v1/webhooks/{made['id']}/deliveries/msg_nope/redeliver", headers=auth(admin)
    )
    assert_error(unknown, 404, "not_found")


@SQLITE
def test_the_deadline_ends_retries_and_a_deleted_endpoint_ends_its_delivery(
    client: TestClient,
    admin: dict[str, str],
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shipway.db import transaction
    from shipway.ids import utcnow
    from shipway.webhooks.delivery import Result, claim, record

    monkeypatch.setenv("SHIPWAY_WEBHOOK_DEADLINE_SECONDS", "0.5")
    get_settings.cache_clear()
    receiver.default = 500
    made = create(client, admin, receiver.url, "release.active")
    client.post(f"/api/v1/webhooks/{made['id']}/test", headers=auth(admin))

    def given_up() -> Any:
        log = deliveries(client, admin, made["id"])
        return log if log[0]["state"] == "failed" else None

    log = pump_until(given_up, message="given up at the deadline")
    # 0.2 s then 0.4 s of backoff: the third attempt would come after the 0.5 s deadline
    assert len(log[0]["attempt_log"]) == 2, log

    # A delivery whose endpoint is deleted while its request is under way is dropped.
    monkeypatch.setenv("SHIPWAY_WEBHOOK_DEADLINE_SECONDS", "60")
    get_settings.cache_clear()
    queued = client.post(f"/api/v1/webhooks/{made['id']}/test", headers=auth(admin)).json()
    with transaction() as session:
        taken = claim(session, queued["id"], now=utcnow(), settings=get_settings())
    assert taken is not None and taken.attempt == 1
    assert client.delete(f"/api/v1/webhooks/{made['id']}", headers=auth(admin)).status_code == 200
    with transaction() as session:
        outcome = record(
            session, taken, Result(status_code=200), now=utcnow(), settings=get_settings()
        )
    assert outcome == "gone"


@SQLITE
def test_rotation_sends_both_signatures_during_the_overlap(
    client: TestClient, admin: dict[str, str], receiver: Receiver
) -> None:
    made = create(client, admin, receiver.url, "version.ready")
    rotated = client.post(
        f"/api/v1/webhooks/{made['id']}/rotate", json={"overlap_seconds": 3600}, headers=auth(admin)
    )
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["secret"]
    assert new != made["secret"] and rotated.json()["previous_secret_expires_at"]
    assert (
        client.post(f"/api/v1/webhooks/{made['id']}/test", headers=auth(admin)).status_code == 202
    )
    pump_until(lambda: receiver.received, message="the test delivery")
    request = receiver.received[0]
    assert json.loads(request.body)["type"] == "webhook.test"
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (made["secret"], new):
        assert verify(secret, request.headers, request.body)
        Webhook(secret).verify(request.body, request.headers)

    # Rotating with no overlap: only the newest secret signs.
    newest = client.post(
        f"/api/v1/webhooks/{made['id']}/rotate", json={"overlap_seconds": 0}, headers=auth(admin)
    ).json()["secret"]
    client.post(f"/api/v1/webhooks/{made['id']}/test", headers=auth(admin))
    pump_until(lambda: len(receiver.received) >= 2, message="the second test delivery")
    last = receiver.received[1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    assert verify(newest, last.headers, last.body)
    assert not verify(new, last.headers, last.body) and not verify(
        made["secret"], last.headers, last.body
    )


@SQLITE
def test_stuck_job_is_delivered_once(
    client: TestClient,
    admin: dict[str, str],
    receiver: Receiver,
    make_version: VersionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPWAY_STUCK_AFTER_SECONDS", "0.2")
    get_settings.cache_clear()
    made = create(client, admin, receiver.url, "job.stuck")
    dep = new_deployment(client, admin)
    version = make_version(dep, "ready", runtime_image="shipway-test/none:1")
    promoted = promote(client, admin, dep, version)  # no worker: it stays queued
    pump_until(lambda: receiver.of_type("job.stuck"), message="a job.stuck delivery")
    for _ in range(3):  # later passes see the same stuck job: no second delivery
        pump_until(lambda: True)
    stuck = receiver.of_type("job.stuck")
    assert len(stuck) == 1
    data = json.loads(stuck[0].body)["data"]
    assert data["job_id"] == promoted["job"]["id"]
    assert data["stuck_reason"] == "queued_too_long" and data["kind"] == "promote"
    assert verify(made["secret"], stuck[0].headers, stuck[0].body)


@SQLITE
def test_release_and_canary_transitions_map_to_their_types(
    client: TestClient, admin: dict[str, str], receiver: Receiver, make_version: VersionFactory
) -> None:
    """Release and canary transitions recorded by the services' own functions."""
    from shipway.catalog.machines import RELEASE
    from shipway.catalog.models import Release
    from shipway.db import transaction
    from shipway.states import record_event, transition

    types = (
        "release.active",
        "release.unhealthy",
        "release.rolled_back",
        "release.failed",
        "canary.step",
        "canary.aborted",
        "canary.promoted",
    )
    create(client, admin, receiver.url, *types)
    dep = new_deployment(client, admin)
    version = make_version(dep, "ready", runtime_image="shipway-test/none:1")
    promoted = promote(client, admin, dep, version, environment="staging")
    release_id = promoted["release"]["id"]
    doomed = promote(client, admin, dep, version, environment="production")["release"]["id"]
    with transaction() as session:
        transition(
            session,
            RELEASE,
            subject_id=doomed,
            from_state="DEPLOYING",
            to_state="FAILED",
            values={"failure_reason": "health_check_failed"},
        )
        for before, after in [
            ("DEPLOYING", "ACTIVE"),
            ("ACTIVE", "UNHEALTHY"),
            ("UNHEALTHY", "ROLLED_BACK"),
        ]:
            transition(session, RELEASE, subject_id=release_id, from_state=before, to_state=after)
        release = session.get(Release, release_id)
        assert release is not None
        for name in ("step_started", "paused", "aborted", "completed"):
            record_event(
                session,
                workspace_id=release.workspace_id,
                subject_type="canary",
                subject_id=release_id,
                from_state=None,
                to_state=name,
                deployment_id=dep,
                data={"step_index": 0, "weight": 10},
            )
    wanted = [
        "release.failed",
        "release.active",
        "release.unhealthy",
        "release.rolled_back",
        "canary.step",
        "canary.aborted",
        "canary.promoted",
    ]
    pump_until(lambda: len(receiver.received) >= len(wanted), message="seven deliveries")
    got = sorted(json.loads(r.body)["type"] for r in receiver.received)
    assert got == sorted(wanted)
    active = json.loads(receiver.of_type("release.active")[0].body)["data"]
    assert active["environment"] == "staging" and active["release_id"] == release_id
    assert active["version_id"] == version and active["from_state"] == "DEPLOYING"
    failed = json.loads(receiver.of_type("release.failed")[0].body)["data"]
    assert failed["release_id"] == doomed and failed["failure_reason"] == "health_check_failed"
    assert failed["environment"] == "production"
    step = json.loads(receiver.of_type("canary.step")[0].body)["data"]
    assert step["canary"] == {"step_index": 0, "weight": 10}


# --------------------------------------------------------------------------- rollouts


def _lane(stop: threading.Event) -> threading.Thread:
    """The webhook lane as the relay runs it (its own thread)."""
    from shipway.jobs.periodic import run_lane, tasks

    lane = [task for task in tasks() if task.name == "webhooks"]
    assert lane, "the webhooks periodic task is registered"
    thread = threading.Thread(target=run_lane, args=(lane, stop), daemon=True)
    thread.start()
    return thread


@POSTGRES
def test_a_hanging_endpoint_never_delays_a_real_promote(
    client: TestClient,
    admin: dict[str, str],
    receiver: Receiver,
    make_version: VersionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real rollout completes, and another endpoint is served, while one endpoint holds
    every request open (its timeout is longer than the whole test)."""
    from shipway.jobs.runner import run_job

    monkeypatch.setenv("SHIPWAY_WEBHOOK_TIMEOUT_SECONDS", "60")
    get_settings.cache_clear()
    receiver.default = "hang"
    made = create(client, admin, receiver.url, "version.ready", "release.active")
    dep = new_deployment(client, admin)
    version = make_version(dep, "ready")  # the real static image: the rollout runs it
    stop = threading.Event()
    lane = _lane(stop)
    with running_receiver() as healthy:
        other = create(client, admin, healthy.url, "release.active")
        try:
            wait_until(lambda: receiver.hanging, timeout=15, message="version.ready being sent")
            promoted = promote(client, admin, dep, version)
            started = time.monotonic()
            assert run_job(promoted["job"]["id"]) == "succeeded"
            took = time.monotonic() - started
            assert took < 30, took
            # release.active reaches the healthy endpoint while the first one still hangs
            # (on version.ready, and now on release.active too).
            wait_until(lambda: healthy.received, timeout=20, message="the healthy endpoint")
            assert receiver.hanging >= 1
            wait_until(lambda: receiver.hanging == 2, timeout=20, message="both requests hang")
        finally:
            receiver.release()
            stop.set()
            lane.join(timeout=10)
    served = healthy.received[0]
    assert verify(other["secret"], served.headers, served.body)
    active = json.loads(served.body)
    assert active["type"] == "release.active"
    assert active["data"]["release_id"] == promoted["release"]["id"]
    assert active["data"]["environment"] == "production"
    assert active["data"]["version_number"] == 1
    for request in receiver.received:
        assert verify(made["secret"], request.headers, request.body)


def test_migration_0010_starts_the_outbox_at_the_newest_event(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Webhooks are about what happens from now on: an upgraded database's history is not
    sent to the first endpoint; downgrade removes the tables."""
    from alembic import command
    from sqlalchemy import inspect, text

    from shipway.db import get_engine
    from shipway.migrate import alembic_config, upgrade

    monkeypatch.setenv("SHIPWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'old.db'}")
    monkeypatch.setenv("SHIPWAY_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    upgrade("0009")
    with get_engine().begin() as connection:
        connection.execute(
            text("INSERT INTO workspaces (id, name, created_at) VALUES ('w', 'w', '2026-01-01')")
        )
        for n in range(3):
            connection.execute(
                text(
                    "INSERT INTO events (workspace_id, subject_type, subject_id, to_state, reason,"
                    " actor, data, created_at) VALUES ('w', 'version', :s, 'ready', '', '', '{}',"
                    " '2026-01-01')"
                ),
                {"s": f"ver_{n}"},
            )
        newest = connection.execute(text("SELECT MAX(id) FROM events")).scalar_one()
    upgrade("head")
    with get_engine().begin() as connection:
        cursor = connection.execute(text("SELECT last_event_id FROM webhook_cursor")).all()
    assert cursor == [(newest,)]
    config = alembic_config()
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0009")
    assert not {t for t in inspect(get_engine()).get_table_names() if t.startswith("webhook")}
    get_settings.cache_clear()
