"""The seed version pages: list, filters, paging, the full row and the get-version shape."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import TokenFactory, VersionFactory, auth
from tests.test_api_auth import assert_error

SEED_LIST_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "deployment_id": (str,),
    "version_number": (int,),
    "kind": (str,),
    "state": (str,),
    "artifact_sha256": (str, type(None)),
    "source_sha256": (str, type(None)),
    "promoted_at": (str, type(None)),
    "workspace_id": (str,),
    "project_id": (str,),
    "external_workspace_id": (str, type(None)),
    "external_user_id": (str, type(None)),
    "created_at": (str,),
}
FULL_ROW_FIELDS = (
    "artifact_manifest",
    "runtime_image",
    "runtime_command",
    "runtime_port",
    "health_check_path",
    "build_log_uri",
)
SEED_GET_VERSION_FIELDS: dict[str, tuple[type, ...]] = {
    "acp_type": (str, type(None)),
    "author_email": (str,),
    "author_name": (str,),
    "branch_id": (str,),
    "deployed_at": (str, type(None)),
    "git_branch": (str,),
    "git_hash": (str,),
    "id": (str,),
    "image_url": (str, type(None)),
    "sdk_type": (str, type(None)),
    "status": (str, type(None)),
    "created_at": (str, type(None)),
    "failure_diagnostics": (dict, type(None)),
    "failure_reason": (str, type(None)),
    "git_message": (str,),
    "image_expires_at": (str, type(None)),
    "is_dirty": (bool,),
    "last_rollback_at": (str, type(None)),
    "replicas": (int,),
    "retired_at": (str, type(None)),
    "rollback_count": (int,),
    "rolled_back_at": (str, type(None)),
    "source_filesystem_id": (str, type(None)),
    "updated_at": (str, type(None)),
}
TIMESTAMP_FIELDS = {
    "promoted_at",
    "created_at",
    "deployed_at",
    "image_expires_at",
    "last_rollback_at",
    "retired_at",
    "rolled_back_at",
    "updated_at",
}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
PROVENANCE = {
    "git_branch": "main",
    "git_hash": "a" * 40,
    "git_message": "Fix the thing",
    "is_dirty": True,
    "author_name": "Dr Smith",
    "author_email": "smith@example.com",
    "branch_id": "br_1",
    "source_filesystem_id": "fs_1",
    "acp_type": "async",
    "sdk_type": "codex_agent_sdk",
    "external_user_id": "dr-smith-456",
}


def versions_url(deployment: dict[str, Any]) -> str:
    return f"/api/v1/deployments/{deployment['id']}/versions"


def list_versions(client: TestClient, deployment: dict[str, Any], **params: Any) -> Any:
    return client.get(versions_url(deployment), params=params, headers=auth(deployment["token"]))


def promote(client: TestClient, deployment: dict[str, Any], version_id: str, env: str) -> Any:
    response = client.post(
        f"{versions_url(deployment)}/{version_id}/promote",
        json={"environment": env},
        headers=auth(deployment["token"], **{"Idempotency-Key": f"{version_id}-{env}"}),
    )
    assert response.status_code == 202, response.text
    return response.json()


def run(job_id: str) -> None:
    from shipway.jobs.runner import run_job

    assert run_job(job_id) == "succeeded"


def assert_timestamps(body: dict[str, Any]) -> None:
    for name in TIMESTAMP_FIELDS & set(body):
        value = body[name]
        assert value is None or RFC3339_Z.match(value), (name, value)


def test_list_is_newest_first_with_seed_fields(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    ids = [make_version(deployment["id"], state) for state in ("ready", "failed", "created")]
    response = list_versions(client, deployment)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data", "next_cursor"}
    assert body["next_cursor"] is None
    assert [v["id"] for v in body["data"]] == ids[::-1]
    assert [v["version_number"] for v in body["data"]] == [3, 2, 1]
    assert [v["state"] for v in body["data"]] == ["created", "failed", "ready"]
    for row in body["data"]:
        assert set(row) == set(SEED_LIST_FIELDS), set(row) ^ set(SEED_LIST_FIELDS)
        for name, types in SEED_LIST_FIELDS.items():
            assert isinstance(row[name], types), (name, row[name])
        assert row["deployment_id"] == deployment["id"]
        assert row["workspace_id"] == deployment["workspace_id"]
        assert row["project_id"] == deployment["project_id"]
        assert row["kind"] == "static"
        assert re.fullmatch(r"[0-9a-f]{64}", row["source_sha256"])
        assert_timestamps(row)
    ready = body["data"][-1]
    assert re.fullmatch(r"[0-9a-f]{64}", ready["artifact_sha256"])  # plain hex, as source
    assert body["data"][0]["artifact_sha256"] is None


def test_filters(
    client: TestClient,
    make_token: TokenFactory,
    make_version: VersionFactory,
) -> None:
    token = make_token("deployments:write", workspace="clinic", external_workspace_id="clinic_123")
    created = client.post(
        "/api/v1/deployments", json={"name": "portal", "kind": "container"}, headers=auth(token)
    )
    assert created.status_code == 201, created.text
    deployment = {**created.json(), "token": token}
    v1 = make_version(deployment["id"], "ready")
    v2 = make_version(deployment["id"], "ready")
    v3 = make_version(deployment["id"], "failed")
    v4 = make_version(deployment["id"], "building")

    def ids(**params: Any) -> list[str]:
        response = list_versions(client, deployment, **params)
        assert response.status_code == 200, response.text
        return [v["id"] for v in response.json()["data"]]

    assert ids() == [v4, v3, v2, v1]
    assert ids(state="ready") == [v2, v1]
    assert ids(state="failed") == [v3]
    assert ids(state="archived") == []
    assert ids(workspace_id=token["workspace_id"]) == [v4, v3, v2, v1]
    assert ids(workspace_id="550e8400-e29b-41d4-a716-446655440000") == []
    assert ids(external_workspace_id="clinic_123") == [v4, v3, v2, v1]
    assert ids(external_workspace_id="clinic_999") == []
    assert ids(state="ready", external_workspace_id="clinic_123") == [v2, v1]
    row = list_versions(client, deployment).json()["data"][0]
    assert row["external_workspace_id"] == "clinic_123"
    assert row["kind"] == "container"

    assert ids(environment="staging") == []
    promote(client, deployment, v1, "staging")
    promote(client, deployment, v2, "production")
    assert ids(environment="staging") == [v1]
    assert ids(environment="production") == [v2]
    assert ids(environment="production", state="failed") == []
    assert_error(list_versions(client, deployment, state="bogus"), 422, "validation_error")


def test_limit_bounds_and_default(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    for limit in (0, -1, 201, "ten"):
        assert_error(list_versions(client, deployment, limit=limit), 422, "validation_error")
    for _ in range(51):
        make_version(deployment["id"], "created")
    default = list_versions(client, deployment).json()
    assert len(default["data"]) == 50
    assert default["next_cursor"] is not None
    assert [v["version_number"] for v in default["data"]] == list(range(51, 1, -1))
    rest = list_versions(client, deployment, cursor=default["next_cursor"]).json()
    assert [v["version_number"] for v in rest["data"]] == [1]
    assert rest["next_cursor"] is None
    assert len(list_versions(client, deployment, limit=200).json()["data"]) == 51
    assert len(list_versions(client, deployment, limit=1).json()["data"]) == 1
    exact = list_versions(client, deployment, limit=51).json()
    assert len(exact["data"]) == 51 and exact["next_cursor"] is None


def test_cursor_paging_walks_every_version_once(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    ids = [make_version(deployment["id"], "ready") for _ in range(7)]
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = list_versions(client, deployment, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([v["id"] for v in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
        assert len(pages) < 10
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids[::-1]
    # A cursor is stable: versions published after it was handed out do not shift the walk.
    first = list_versions(client, deployment, limit=3).json()
    make_version(deployment["id"], "ready")
    second = list_versions(client, deployment, limit=3, cursor=first["next_cursor"]).json()
    assert [v["id"] for v in second["data"]] == ids[::-1][3:6]
    # Filters and cursors combine.
    filtered = list_versions(client, deployment, limit=2, state="ready").json()
    after = list_versions(
        client, deployment, limit=2, state="ready", cursor=filtered["next_cursor"]
    ).json()
    assert len(after["data"]) == 2
    assert {v["id"] for v in after["data"]}.isdisjoint(v["id"] for v in filtered["data"])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MALFORMED_CURSORS = [
    "garbage",
    "!!!",
    "%%%",
    "a",
    _b64(b"not json"),
    _b64(b"[1]"),
    _b64(b'"n"'),
    _b64(b"{}"),
    _b64(json.dumps({"n": "5"}).encode()),
    _b64(json.dumps({"n": True}).encode()),
    _b64(json.dumps({"n": 1.5}).encode()),
    _b64(json.dumps({"n": None}).encode()),
    _b64(json.dumps({"n": 10**30}).encode()),
    _b64(json.dumps({"n": -(10**30)}).encode()),
    _b64(json.dumps({"n": 2**31}).encode()),
    _b64(b"\xff\xfe"),
]


def test_malformed_cursor_is_422(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    make_version(deployment["id"], "ready")
    for cursor in MALFORMED_CURSORS:
        error = assert_error(list_versions(client, deployment, cursor=cursor), 422)
        assert error["code"] in ("invalid_input", "validation_error"), (cursor, error)
        assert "cursor" in json.dumps(error), (cursor, error)


def test_full_row(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready", **PROVENANCE)
    response = client.get(
        f"{versions_url(deployment)}/{version_id}", headers=auth(deployment["token"])
    )
    assert response.status_code == 200, response.text
    row = response.json()
    missing = (
        set(SEED_LIST_FIELDS) | set(FULL_ROW_FIELDS) | set(SEED_GET_VERSION_FIELDS) | {"releases"}
    ) - set(row)
    assert not missing, missing
    for name, types in {**SEED_LIST_FIELDS, **SEED_GET_VERSION_FIELDS}.items():
        assert isinstance(row[name], types), (name, row[name])
    for name, value in PROVENANCE.items():
        assert row[name] == value, name
    assert row["id"] == version_id
    assert row["state"] == "ready"
    assert row["runtime_port"] == deployment["runtime_port"]
    assert row["health_check_path"] == deployment["health_check_path"]
    assert row["status"] is None and row["releases"] == []
    assert row["replicas"] == 0 and row["rollback_count"] == 0
    assert_timestamps(row)


def test_get_version_seed_shape(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready", **PROVENANCE)
    promote(client, deployment, version_id, "production")
    response = client.get(f"/api/v1/versions/{version_id}", headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    body = response.json()
    missing = set(SEED_GET_VERSION_FIELDS) - set(body)
    assert not missing, missing
    for name, types in SEED_GET_VERSION_FIELDS.items():
        assert isinstance(body[name], types), (name, body[name])
    assert body["id"] == version_id
    assert body["status"] == "DEPLOYING"
    assert body["acp_type"] == "async" and body["sdk_type"] == "codex_agent_sdk"
    assert body["git_message"] == "Fix the thing" and body["is_dirty"] is True
    assert_timestamps(body)
    # Defaults of the seed page for a version without provenance.
    plain = make_version(deployment["id"], "ready")
    body = client.get(f"/api/v1/versions/{plain}", headers=auth(deployment["token"])).json()
    assert body["git_message"] == "" and body["is_dirty"] is False
    assert body["replicas"] == 0 and body["rollback_count"] == 0
    assert body["status"] is None


def test_environment_picks_the_lifecycle_fields(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    staged = promote(client, deployment, version_id, "staging")
    produced = promote(client, deployment, version_id, "production")
    run(produced["job"]["id"])
    headers = auth(deployment["token"])

    for path in (f"{versions_url(deployment)}/{version_id}", f"/api/v1/versions/{version_id}"):
        default = client.get(path, headers=headers).json()
        assert default["status"] == "ACTIVE"
        assert default["environment"] == "production"
        assert RFC3339_Z.match(default["deployed_at"])
        staging = client.get(path, params={"environment": "staging"}, headers=headers).json()
        assert staging["status"] == "DEPLOYING"
        assert staging["environment"] == "staging"
        assert staging["deployed_at"] is None
        nowhere = client.get(path, params={"environment": "preview"}, headers=headers)
        assert nowhere.status_code == 404, nowhere.text  # no such environment: not a null
        assert nowhere.json()["error"]["code"] == "environment_not_found"
        assert nowhere.json()["error"]["details"]["environment"] == "preview"
        releases = {r["environment"]: r for r in default["releases"]}
        assert set(releases) == {"staging", "production"}
        assert releases["staging"]["id"] == staged["release"]["id"]
        assert releases["production"]["id"] == produced["release"]["id"]
        assert releases["production"]["status"] == "ACTIVE"
        for release in releases.values():
            assert_timestamps(release)
            assert release["version_id"] == version_id

    full = client.get(f"{versions_url(deployment)}/{version_id}", headers=headers).json()
    assert RFC3339_Z.match(full["promoted_at"])


def test_ids_are_prefixed_and_random(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_ids = [make_version(deployment["id"], "ready") for _ in range(6)]
    answers = [promote(client, deployment, v, f"env-{i}") for i, v in enumerate(version_ids)]
    groups = {
        "dep": [deployment["id"]]
        + [
            client.post(
                "/api/v1/deployments",
                json={"name": f"d{i}", "kind": "static"},
                headers=auth(deployment["token"]),
            ).json()["id"]
            for i in range(5)
        ],
        "ver": version_ids,
        "rel": [a["release"]["id"] for a in answers],
        "job": [a["job"]["id"] for a in answers],
    }
    for prefix, ids in groups.items():
        assert len(set(ids)) == len(ids) == 6
        for value in ids:
            assert re.fullmatch(rf"{prefix}_[0-9a-z]{{16,}}", value), value
        suffixes = [value.split("_", 1)[1] for value in ids]
        # A counter or timestamp would share long prefixes and few characters.
        assert len(set("".join(suffixes))) >= 20, suffixes
        assert len({s[:6] for s in suffixes}) == len(suffixes), suffixes
    assert deployment["workspace_id"] != deployment["project_id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", deployment["workspace_id"])


def test_unknown_version_is_404(client: TestClient, deployment: dict[str, Any]) -> None:
    assert_error(
        client.get(f"{versions_url(deployment)}/ver_missing", headers=auth(deployment["token"])),
        404,
        "not_found",
    )
    assert_error(
        client.get("/api/v1/versions/ver_missing", headers=auth(deployment["token"])),
        404,
        "not_found",
    )


def test_a_failed_build_reads_failed_with_its_reason(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    """The seed marks status required: a version whose build failed and was never released
    reads FAILED with the build's failure_reason (a ready one never released: null)."""
    from sqlalchemy import update

    from shipway.catalog.models import Version
    from shipway.db import transaction

    failed = make_version(deployment["id"], "failed")
    with transaction() as session:
        session.execute(
            update(Version).where(Version.id == failed).values(failure_reason="build_failed")
        )
    ready = make_version(deployment["id"], "ready")
    headers = auth(deployment["token"])

    body = client.get(f"/api/v1/versions/{failed}", headers=headers).json()
    assert (body["status"], body["failure_reason"]) == ("FAILED", "build_failed")
    assert client.get(f"/api/v1/versions/{ready}", headers=headers).json()["status"] is None
