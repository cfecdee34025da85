"""OpenAPI document, health, body limits, unknown routes, the audit, job listing, the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shipway.config import get_settings
from tests.conftest import TokenFactory, VersionFactory, auth
from tests.test_api_auth import assert_error

ERROR_REF = "#/components/schemas/ErrorResponse"


# --------------------------------------------------------------------------- OpenAPI


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def api_operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        if path.startswith("/api/v1")
        for method, op in ops.items()
    ]


def test_openapi_documents_the_error_shape_everywhere(spec: dict[str, Any]) -> None:
    operations = api_operations(spec)
    assert len(operations) >= 12
    error_schema = spec["components"]["schemas"]["ErrorResponse"]
    assert error_schema["required"] == ["error"]
    body = spec["components"]["schemas"][error_schema["properties"]["error"]["$ref"].split("/")[-1]]
    assert set(body["properties"]) == {"code", "message", "details"}
    assert "HTTPValidationError" not in json.dumps(spec)

    for method, path, op in operations:
        where = f"{method} {path}"
        responses = op["responses"]
        statuses = set(responses)
        assert {"401", "403"} <= statuses, where  # every route needs a token and a scope
        if "{" in path:
            assert "404" in statuses, where
        if op.get("parameters") and any(p["in"] == "query" for p in op["parameters"]):
            assert "422" in statuses, where
        if "requestBody" in op:
            assert {"413", "422"} <= statuses, where
        headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
        if "Idempotency-Key" in headers:
            assert "400" in statuses, where
        if path.endswith(("/promote", "/cancel")):
            assert "409" in statuses, where
        for status, response in responses.items():
            if status[0] in "45":
                content = response.get("content", {})
                assert set(content) == {"application/json"}, (where, status, content)
                assert content["application/json"]["schema"] == {"$ref": ERROR_REF}, (
                    where,
                    status,
                )
        success = sorted(s for s in statuses if s.startswith("2"))
        # One success status; a config change has two: 200 (saved, nothing to roll out)
        # and 202 (saved, and a rollout queued).
        assert len(success) == 1 or (where.endswith("/config") and success == ["200", "202"])
        for status in success:
            content = responses[status].get("content", {})
            assert content, where
            if "application/json" in content:
                schema = content["application/json"].get("schema", {})
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                assert ref and ref != ERROR_REF, (where, schema)
            else:  # plain text (build log) or server-sent events (job event stream)
                assert set(content) in ({"text/plain"}, {"text/event-stream"}), where
    expected = {
        ("POST", "/api/v1/deployments/{deployment_id}/versions/{version_id}/promote"): "202",
        ("POST", "/api/v1/deployments"): "201",
        ("GET", "/api/v1/deployments/{deployment_id}/versions"): "200",
    }
    for (method, path), status in expected.items():
        assert status in spec["paths"][path][method.lower()]["responses"]


def test_openapi_promote_documents_its_inputs(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/api/v1/deployments/{deployment_id}/versions/{version_id}/promote"]["post"]
    headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
    assert "Idempotency-Key" in headers
    schemas = spec["components"]["schemas"]
    promote = schemas["PromoteRequest"]
    assert promote.get("additionalProperties") is False
    assert promote["properties"]["environment"]["default"] == "production"
    listing = spec["paths"]["/api/v1/deployments/{deployment_id}/versions"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["maximum"] == 200
    assert limit["schema"]["default"] == 50
    assert {"bearerAuth", "HTTPBearer"} & set(spec["components"].get("securitySchemes", {}))


# --------------------------------------------------------------------------- health


def test_healthz_and_readyz(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
    }


def test_readyz_reports_an_unreachable_database(
    shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shipway.api import create_app

    monkeypatch.setenv(
        "SHIPWAY_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    )
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        response = client.get("/readyz")
        error = assert_error(response, 503, "not_ready")
        assert error["details"]["checks"]["database"].startswith("unreachable")
        assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- body limits


@pytest.fixture
def small_client(
    shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """An API whose JSON bodies are limited to 64 bytes."""
    from shipway.api import create_app

    monkeypatch.setenv("SHIPWAY_MAX_REQUEST_BYTES", "64")
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def test_body_over_the_limit_is_413(small_client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:write")
    big = {"name": "x" * 100, "kind": "static"}
    error = assert_error(
        small_client.post("/api/v1/deployments", json=big, headers=auth(token)),
        413,
        "payload_too_large",
    )
    assert error["details"]["max_bytes"] == 64

    # Also when the client streams the body without a Content-Length.
    def chunks() -> Iterator[bytes]:
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 16):
            yield raw[i : i + 16]

    streamed = small_client.post(
        "/api/v1/deployments",
        content=chunks(),
        headers=auth(token, **{"Content-Type": "application/json"}),
    )
    assert_error(streamed, 413, "payload_too_large")
    # Under the limit is fine, and nothing was created by the refused requests.
    ok = small_client.post(
        "/api/v1/deployments", json={"name": "x", "kind": "static"}, headers=auth(token)
    )
    assert ok.status_code == 201, ok.text
    listed = small_client.get("/api/v1/deployments", headers=auth(token)).json()
    assert [d["name"] for d in listed["data"]] == ["x"]


def test_unknown_route_and_method_use_the_error_shape(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("admin")
    assert_error(client.get("/api/v1/nope", headers=auth(token)), 404, "not_found")
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.delete("/api/v1/deployments", headers=auth(token)), 405)


# --------------------------------------------------------------------------- audit


def test_deployment_events_list_the_audit_with_paging(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    token = deployment["token"]
    version_id = make_version(deployment["id"], "ready")
    promoted = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        headers=auth(token, **{"Idempotency-Key": "ev"}),
    ).json()
    url = f"/api/v1/deployments/{deployment['id']}/events"
    everything = client.get(url, headers=auth(token)).json()["data"]
    summary = [(e["subject_type"], e["from_state"], e["to_state"]) for e in everything]
    assert summary == [
        ("deployment", None, "created"),
        ("version", None, "created"),
        ("version", "created", "building"),
        ("version", "building", "ready"),
        ("job", None, "queued"),
        ("release", None, "DEPLOYING"),
    ]
    by_subject = {e["subject_type"]: e for e in everything}
    assert by_subject["deployment"]["subject_id"] == deployment["id"]
    assert by_subject["release"]["subject_id"] == promoted["release"]["id"]
    assert by_subject["release"]["job_id"] == promoted["job"]["id"]
    assert by_subject["job"]["subject_id"] == promoted["job"]["id"]
    assert by_subject["job"]["actor"] == f"token:{token['token_id']}"
    for event in everything:
        assert event["deployment_id"] == deployment["id"]
        assert event["created_at"].endswith("Z")
        assert isinstance(event["id"], int)
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)

    # Paging with next_cursor walks the same events exactly once.
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get(url, params=params, headers=auth(token)).json()
        if not page["data"]:
            assert page["next_cursor"] == cursor  # poll again later from the same place
            break
        assert len(page["data"]) <= 4
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
    assert seen == [e["id"] for e in everything]

    # New events appear after the cursor.
    from shipway.jobs.runner import run_job

    assert run_job(promoted["job"]["id"]) == "succeeded"
    later = client.get(url, params={"cursor": cursor}, headers=auth(token)).json()["data"]
    later_summary = [(e["subject_type"], e["to_state"]) for e in later]
    assert ("release", "ACTIVE") in later_summary
    assert ("job", "succeeded") in later_summary
    assert all(e["id"] > int(cursor or 0) for e in later)

    for bad in ("abc", "-1", "1" * 30):
        assert_error(client.get(url, params={"cursor": bad}, headers=auth(token)), 422)
    assert_error(client.get(url, params={"limit": 0}, headers=auth(token)), 422)


def test_job_audit_lists_one_jobs_transitions(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    from shipway.jobs.runner import run_job

    token = deployment["token"]
    version_id = make_version(deployment["id"], "ready")
    job = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        headers=auth(token, **{"Idempotency-Key": "ja"}),
    ).json()["job"]
    assert run_job(job["id"]) == "succeeded"
    events = client.get(f"/api/v1/jobs/{job['id']}/audit", headers=auth(token)).json()
    assert all(e["job_id"] == job["id"] for e in events)
    job_states = [(e["from_state"], e["to_state"]) for e in events if e["subject_type"] == "job"]
    assert job_states == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
    phases = [e["to_state"] for e in events if e["subject_type"] == "job_phase"]
    assert phases[:3] == ["scale", "health_check", "switch"]


# --------------------------------------------------------------------------- jobs listing


def test_jobs_list_filters_and_pages(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    make_token: TokenFactory,
) -> None:
    token = deployment["token"]
    other = client.post(
        "/api/v1/deployments", json={"name": "other", "kind": "static"}, headers=auth(token)
    ).json()
    jobs: dict[str, str] = {}
    for label, dep_id, state in [
        ("a", deployment["id"], "ready"),
        ("b", deployment["id"], "archived"),
        ("c", other["id"], "ready"),
        ("d", other["id"], "ready"),
    ]:
        version_id = make_version(dep_id, state)
        response = client.post(
            f"/api/v1/deployments/{dep_id}/versions/{version_id}/promote",
            json={"environment": f"env-{label}"},
            headers=auth(token, **{"Idempotency-Key": label}),
        )
        assert response.status_code == 202, response.text
        jobs[label] = response.json()["job"]["id"]
    client.post(f"/api/v1/jobs/{jobs['d']}/cancel", headers=auth(token))

    def ids(**params: Any) -> list[str]:
        response = client.get("/api/v1/jobs", params=params, headers=auth(token))
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["data"]]

    assert ids() == [jobs[k] for k in "dcba"]  # newest first
    assert ids(deployment_id=deployment["id"]) == [jobs["b"], jobs["a"]]
    assert ids(deployment_id=other["id"]) == [jobs["d"], jobs["c"]]
    assert ids(kind="rollback") == [jobs["b"]]
    assert ids(kind="promote") == [jobs["d"], jobs["c"], jobs["a"]]
    assert ids(state="cancelled") == [jobs["d"]]
    assert ids(state="queued", deployment_id=other["id"]) == [jobs["c"]]
    assert ids(state="succeeded") == []
    assert_error(client.get("/api/v1/jobs", params={"state": "nope"}, headers=auth(token)), 422)
    assert_error(client.get("/api/v1/jobs", params={"limit": 201}, headers=auth(token)), 422)
    assert_error(
        client.get("/api/v1/jobs", params={"cursor": "!!notacursor"}, headers=auth(token)), 422
    )

    walked: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/jobs", params=params, headers=auth(token)).json()
        walked += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [jobs[k] for k in "dcba"]

    stranger = make_token("admin", workspace="globex")
    assert client.get("/api/v1/jobs", headers=auth(stranger)).json()["data"] == []


# --------------------------------------------------------------------------- deployments


def test_duplicate_deployment_name_is_409(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    token = deployment["token"]
    again = client.post(
        "/api/v1/deployments", json={"name": "site", "kind": "container"}, headers=auth(token)
    )
    error = assert_error(again, 409, "deployment_name_taken")
    assert error["details"]["name"] == "site"
    listed = client.get("/api/v1/deployments", headers=auth(token)).json()["data"]
    assert [d["name"] for d in listed] == ["site"]
    # The name is free in another workspace.
    other = make_token("deployments:write", workspace="globex")
    elsewhere = client.post(
        "/api/v1/deployments", json={"name": "site", "kind": "static"}, headers=auth(other)
    )
    assert elsewhere.status_code == 201, elsewhere.text


def test_deployment_create_validates_and_reads_back(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("deployments:write")
    for bad in (
        {"name": "", "kind": "static"},
        {"name": "x", "kind": "vm"},
        {"name": "x", "kind": "static", "environments": ["Prod"]},
        {"name": "x", "kind": "static", "replicas": 0},
        {"name": "x", "kind": "static", "surprise": True},
        {"name": "x", "kind": "static", "project_id": "nope"},
    ):
        response = client.post("/api/v1/deployments", json=bad, headers=auth(token))
        assert response.status_code in (404, 422), (bad, response.text)
        assert_error(response, response.status_code)
    created = client.post(
        "/api/v1/deployments",
        json={"name": "web", "kind": "container", "environments": ["staging", "production"]},
        headers=auth(token),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"].startswith("dep_")
    assert [e["name"] for e in body["environments"]] == ["production", "staging"]
    assert all(e["status"] is None for e in body["environments"])
    fetched = client.get(f"/api/v1/deployments/{body['id']}", headers=auth(token)).json()
    assert fetched == body


# --------------------------------------------------------------------------- CLI


def test_cli_tokens_create_makes_a_working_token(
    client: TestClient, shipway_env: dict[str, str]
) -> None:
    from typer.testing import CliRunner

    from shipway.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "tokens",
            "create",
            "--workspace",
            "cli-ws",
            "--scope",
            "deployments:read",
            "--scope",
            "deployments:write",
            "--external-workspace-id",
            "ext-9",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["token"].startswith("shw_")
    assert out["token_id"].startswith("tok_")
    assert out["scopes"] == ["deployments:read", "deployments:write"]
    headers = {"Authorization": f"Bearer {out['token']}"}
    created = client.post(
        "/api/v1/deployments", json={"name": "from-cli", "kind": "static"}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["workspace_id"] == out["workspace_id"]
    assert client.get("/api/v1/deployments", headers=headers).json()["data"][0]["name"] == (
        "from-cli"
    )

    # A read-only token from the CLI cannot write; the plain output prints only the secret.
    plain = runner.invoke(
        app, ["tokens", "create", "--workspace", "cli-ws", "--scope", "deployments:read"]
    )
    assert plain.exit_code == 0, plain.output
    secret = plain.stdout.strip().splitlines()[-1]
    assert secret.startswith("shw_")
    reader = {"Authorization": f"Bearer {secret}"}
    listed = client.get("/api/v1/deployments", headers=reader).json()["data"]
    assert [d["name"] for d in listed] == ["from-cli"]  # same workspace
    assert_error(
        client.post("/api/v1/deployments", json={"name": "no", "kind": "static"}, headers=reader),
        403,
        "insufficient_scope",
    )

    refused = runner.invoke(app, ["tokens", "create", "--workspace", "w", "--scope", "root"])
    assert refused.exit_code == 2


def test_cli_tokens_create_refuses_to_invent_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without database settings, a token written into a new ./.shipway database would be
    one no running API reads: refused, and nothing is created."""
    from typer.testing import CliRunner

    from shipway.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHIPWAY_DATABASE_URL", raising=False)
    monkeypatch.delenv("SHIPWAY_DATA_DIR", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["tokens", "create", "--workspace", "w", "--scope", "deployments:read"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "no shipway database at" in result.output and "SHIPWAY_DATABASE_URL" in result.output
    assert "shw_" not in result.output
    assert list(tmp_path.iterdir()) == []  # no .shipway folder, no database


def test_cli_db_upgrade_with_the_database_down_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from shipway.cli import app
    from tests.support.services import free_port

    url = f"postgresql+psycopg://shipway:secret-pw@127.0.0.1:{free_port()}/shipway"
    monkeypatch.setenv("SHIPWAY_DATABASE_URL", url)
    monkeypatch.setenv("SHIPWAY_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "upgrade"])
    finally:
        get_settings.cache_clear()
    said = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 1, result.output
    assert "cannot reach the database at postgresql+psycopg://shipway:***@127.0.0.1" in said
    assert "Connection refused" in said and "SHIPWAY_DATABASE_URL" in said
    assert "Traceback" not in said and "secret-pw" not in said
    assert len(result.output.strip().splitlines()) <= 6, result.output


def test_cli_tokens_create_refuses_a_second_workspace_of_one_name(
    shipway_env: dict[str, str],
) -> None:
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from shipway.cli import app
    from shipway.db import transaction
    from shipway.workspaces.models import Workspace

    def create(*args: str) -> Any:
        return CliRunner().invoke(app, ["tokens", "create", "--scope", "deployments:read", *args])

    assert create("--workspace", "clinic", "--external-workspace-id", "ext-1").exit_code == 0
    assert create("--workspace", "clinic", "--external-workspace-id", "ext-1").exit_code == 0
    other_id = create("--workspace", "clinic", "--external-workspace-id", "ext-2")
    other_name = create("--workspace", "hospital", "--external-workspace-id", "ext-1")

    assert other_id.exit_code == 2, other_id.output
    assert "workspace 'clinic' exists with external id 'ext-1', not 'ext-2'" in " ".join(
        other_id.output.split()
    )
    assert other_name.exit_code == 2 and "belongs to workspace 'clinic'" in " ".join(
        other_name.output.split()
    )
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Workspace)) == 1
