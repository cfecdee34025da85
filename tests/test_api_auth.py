"""Authentication, scopes and workspace isolation of every API route, on both databases."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.conftest import TokenFactory, VersionFactory, auth
from tests.support.certs import ThrowawayCA


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape, with ``status`` and (optionally) ``code``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def world(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    make_token: TokenFactory,
) -> dict[str, Any]:
    """Workspace acme's deployment with a ready version, a queued promote job and its release."""
    token = deployment["token"]
    version_id = make_version(deployment["id"], "ready")
    promoted = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        headers=auth(token, **{"Idempotency-Key": "world"}),
    )
    assert promoted.status_code == 202, promoted.text
    domain = client.post(
        f"/api/v1/deployments/{deployment['id']}/environments/production/domains",
        json={"hostname": HOSTNAME},
        headers=auth(token),
    )
    assert domain.status_code == 201, domain.text
    return {
        "token": token,
        "token_id": make_token("deployments:read")["token_id"],  # what token routes act on
        "deployment_id": deployment["id"],
        "version_id": version_id,
        "job_id": promoted.json()["job"]["id"],
        "release_id": promoted.json()["release"]["id"],
        "hostname": HOSTNAME,
        **_webhook(client, make_token("admin")),
    }


def _webhook(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    """A webhook endpoint of acme with one (never sent) test delivery."""
    made = client.post(
        "/api/v1/webhooks",
        json={"url": "https://93.184.216.34/hook", "event_types": ["release.active"]},
        headers=auth(admin),
    )
    assert made.status_code == 201, made.text
    hook = made.json()["id"]
    queued = client.post(f"/api/v1/webhooks/{hook}/test", headers=auth(admin))
    assert queued.status_code == 202, queued.text
    return {"webhook_id": hook, "delivery_id": queued.json()["id"]}


HOSTNAME = "www.acme.test"
_CHAIN, _KEY = ThrowawayCA().issue([HOSTNAME])
CERTIFICATE = {"certificate": _CHAIN, "private_key": _KEY}


def source_archive() -> bytes:
    """A small, valid static-site source archive (tar.gz)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"<h1>hello</h1>"
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


CONFIG_CHANGE = {"json": {"values": {"GREETING": "hi"}, "secrets": {"API_KEY": "k-123456"}}}


def routes(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request kwargs) of every /api/v1 route, with ``w``'s ids filled in.

    The bodies are valid, so a refusal can only come from auth, scope or ownership.
    """
    dep, ver, job = w["deployment_id"], w["version_id"], w["job_id"]
    env = w.get("environment", "production")
    host, tok = w["hostname"], w["token_id"]
    hook = f"/api/v1/webhooks/{w['webhook_id']}"
    domains = f"/api/v1/deployments/{dep}/environments/{env}/domains"
    upload = {"files": {"source": ("site.tar.gz", source_archive(), "application/gzip")}}
    return [
        ("GET", "/api/v1/deployments", {}),
        ("POST", "/api/v1/deployments", {"json": {"name": "other", "kind": "static"}}),
        ("GET", f"/api/v1/deployments/{dep}", {}),
        ("PATCH", f"/api/v1/deployments/{dep}", {"json": {"replicas": 1}}),
        ("GET", f"/api/v1/deployments/{dep}/environments/{env}/policy", {}),
        ("PUT", f"/api/v1/deployments/{dep}/environments/{env}/policy", {"json": {}}),
        ("GET", f"/api/v1/deployments/{dep}/versions", {}),
        ("POST", f"/api/v1/deployments/{dep}/versions", upload),
        ("GET", f"/api/v1/deployments/{dep}/versions/{ver}", {}),
        ("GET", f"/api/v1/deployments/{dep}/versions/{ver}/build-log", {}),
        ("POST", f"/api/v1/deployments/{dep}/versions/{ver}/promote", {"json": {}}),
        ("GET", f"/api/v1/deployments/{dep}/events", {}),
        ("GET", f"/api/v1/versions/{ver}", {}),
        ("GET", "/api/v1/jobs", {}),
        ("GET", f"/api/v1/jobs/{job}", {}),
        ("POST", f"/api/v1/jobs/{job}/cancel", {}),
        ("POST", f"/api/v1/jobs/{job}/pause", {}),
        ("POST", f"/api/v1/jobs/{job}/resume", {}),
        ("POST", f"/api/v1/jobs/{job}/promote-now", {}),
        ("POST", f"/api/v1/jobs/{job}/abort", {}),
        ("GET", f"/api/v1/jobs/{job}/audit", {}),
        ("GET", f"/api/v1/jobs/{job}/events", {}),
        ("POST", f"/api/v1/deployments/{dep}/rollback", {"json": {}}),
        ("POST", f"/api/v1/deployments/{dep}/versions/{ver}/pin", {}),
        ("DELETE", f"/api/v1/deployments/{dep}/versions/{ver}/pin", {}),
        ("GET", "/api/v1/queue", {}),
        ("GET", domains, {}),
        ("POST", domains, {"json": {"hostname": "new.acme.test"}}),
        ("DELETE", f"{domains}/{host}", {}),
        ("PUT", f"{domains}/{host}/certificate", {"json": CERTIFICATE}),
        ("DELETE", f"{domains}/{host}/certificate", {}),
        ("GET", f"/api/v1/deployments/{dep}/environments/{env}/config", {}),
        ("PATCH", f"/api/v1/deployments/{dep}/environments/{env}/config", CONFIG_CHANGE),
        ("GET", "/api/v1/tokens", {}),
        ("POST", "/api/v1/tokens", {"json": {"scopes": ["deployments:read"]}}),
        ("POST", f"/api/v1/tokens/{tok}/revoke", {}),
        ("POST", f"/api/v1/tokens/{tok}/rotate", {"json": {"grace_seconds": 60}}),
        ("GET", "/api/v1/webhooks", {}),
        ("POST", "/api/v1/webhooks", {"json": WEBHOOK}),
        ("GET", hook, {}),
        ("PATCH", hook, {"json": {"enabled": False}}),
        ("DELETE", hook, {}),
        ("POST", f"{hook}/rotate", {"json": {"overlap_seconds": 60}}),
        ("POST", f"{hook}/test", {}),
        ("GET", f"{hook}/deliveries", {}),
        ("POST", f"{hook}/deliveries/{w['delivery_id']}/redeliver", {}),
    ]


WEBHOOK = {"url": "https://93.184.216.34/other", "event_types": ["version.ready"]}


COLLECTIONS = (
    "/api/v1/deployments",
    "/api/v1/jobs",
    "/api/v1/queue",
    "/api/v1/tokens",
    "/api/v1/webhooks",
)
# Tokens and webhooks need the admin scope (write and read tokens get 403 there).
ADMIN_ONLY = ("/api/v1/tokens", "/api/v1/webhooks")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def status_of(client: TestClient, path: str, headers: dict[str, str]) -> int:
    """Status of a GET, without reading a (possibly endless) event stream."""
    with client.stream("GET", path, headers=headers) as response:
        return response.status_code


def test_route_table_covers_every_api_route(client: TestClient, world: dict[str, Any]) -> None:
    """If a route is added, this list (and so every check below) must learn about it."""
    documented = {
        (method.upper(), path)
        for path, ops in client.get("/openapi.json").json()["paths"].items()
        if path.startswith("/api/v1")
        for method in ops
    }
    fake = {
        "deployment_id": "{deployment_id}",
        "version_id": "{version_id}",
        "job_id": "{job_id}",
        "environment": "{environment}",
        "hostname": "{hostname}",
        "token_id": "{token_id}",
        "webhook_id": "{webhook_id}",
        "delivery_id": "{delivery_id}",
    }
    assert {(m, p) for m, p, _ in routes(fake)} == documented


def test_no_token_is_401_everywhere(client: TestClient, world: dict[str, Any]) -> None:
    for method, path, kwargs in routes(world):
        headers = {"Idempotency-Key": "no-token"}
        response = client.request(method, path, headers=headers, **kwargs)
        error = assert_error(response, 401, "unauthenticated")
        assert response.headers.get("www-authenticate", "").startswith("Bearer"), (method, path)
        assert "Authorization" in error["message"], error


@pytest.mark.parametrize(
    "header",
    [
        "Bearer shw_not-a-real-token",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "shw_without_scheme",
        "Bearer  ",
    ],
)
def test_bad_token_is_401(client: TestClient, world: dict[str, Any], header: str) -> None:
    for method, path, kwargs in routes(world):
        response = client.request(
            method, path, headers={"Authorization": header, "Idempotency-Key": "bad"}, **kwargs
        )
        assert_error(response, 401, "unauthenticated")
        assert response.headers.get("www-authenticate", "").startswith("Bearer")


def test_revoked_token_is_401(
    client: TestClient, world: dict[str, Any], make_token: TokenFactory
) -> None:
    from shipway.auth.models import ApiToken
    from shipway.db import transaction

    token = make_token("admin")
    assert client.get("/api/v1/deployments", headers=auth(token)).status_code == 200
    with transaction() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == token["token_id"])
            .values(revoked_at=datetime.now(UTC))
        )
    assert_error(client.get("/api/v1/deployments", headers=auth(token)), 401, "unauthenticated")


def _count_rows() -> dict[str, int]:
    from shipway.db import transaction
    from shipway.models import Deployment, Event, IdempotencyRecord, Job, Release

    with transaction() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Deployment, Event, IdempotencyRecord, Job, Release)
        }


def test_read_only_token_cannot_write(
    client: TestClient, world: dict[str, Any], make_token: TokenFactory
) -> None:
    reader = make_token("deployments:read")
    before = _count_rows()
    job = world["job_id"]
    writes = [(m, p, kw) for m, p, kw in routes(world) if m in WRITES]
    assert len(writes) == 27
    for method, path, kwargs in writes:
        response = client.request(
            method, path, headers=auth(reader, **{"Idempotency-Key": "ro"}), **kwargs
        )
        error = assert_error(response, 403, "insufficient_scope")
        needed = "admin" if path.startswith(ADMIN_ONLY) else "deployments:write"
        assert error["details"]["required_scope"] == needed, path
    assert _count_rows() == before
    job_now = client.get(f"/api/v1/jobs/{job}", headers=auth(reader)).json()
    assert job_now["state"] == "queued" and job_now["cancel_requested"] is False
    # ... but it can read everything but the tokens.
    for method, path, _ in routes(world):
        if method == "GET":
            expected = 403 if path.startswith(ADMIN_ONLY) else 200
            assert status_of(client, path, auth(reader)) == expected, path


def test_another_workspace_sees_404_never_403(
    client: TestClient, world: dict[str, Any], make_token: TokenFactory
) -> None:
    stranger = make_token("admin", workspace="globex")
    before = _count_rows()
    for method, path, kwargs in routes(world):
        if path in COLLECTIONS:
            continue  # collection routes: checked below
        response = client.request(
            method, path, headers=auth(stranger, **{"Idempotency-Key": "x"}), **kwargs
        )
        error = assert_error(response, 404, "not_found")
        assert "acme" not in response.text, response.text
        assert error["message"]
    assert _count_rows() == before

    # Collections never show the other workspace's rows.
    listed = client.get("/api/v1/deployments", headers=auth(stranger)).json()
    assert listed["data"] == []
    jobs = client.get(
        "/api/v1/jobs", params={"deployment_id": world["deployment_id"]}, headers=auth(stranger)
    ).json()
    assert jobs["data"] == []
    # Filters on the version list cannot reach into another workspace either.
    response = client.get(
        f"/api/v1/deployments/{world['deployment_id']}/versions",
        params={"workspace_id": world["token"]["workspace_id"]},
        headers=auth(stranger),
    )
    assert_error(response, 404, "not_found")


def test_own_deployment_with_foreign_version_is_404(
    client: TestClient, world: dict[str, Any], make_token: TokenFactory
) -> None:
    """Mixing ids across workspaces (own deployment, their version) is 404 too."""
    stranger = make_token("admin", workspace="globex")
    own = client.post(
        "/api/v1/deployments", json={"name": "mine", "kind": "static"}, headers=auth(stranger)
    )
    assert own.status_code == 201, own.text
    dep = own.json()["id"]
    for method, path in [
        ("GET", f"/api/v1/deployments/{dep}/versions/{world['version_id']}"),
        ("POST", f"/api/v1/deployments/{dep}/versions/{world['version_id']}/promote"),
    ]:
        response = client.request(method, path, headers=auth(stranger, **{"Idempotency-Key": "m"}))
        assert_error(response, 404, "not_found")
    # And a version of one deployment is not reachable through another of the same workspace.
    sibling = client.post(
        "/api/v1/deployments",
        json={"name": "sibling", "kind": "static"},
        headers=auth(world["token"]),
    ).json()["id"]
    response = client.get(
        f"/api/v1/deployments/{sibling}/versions/{world['version_id']}",
        headers=auth(world["token"]),
    )
    assert_error(response, 404, "not_found")


def test_unknown_ids_are_404(
    client: TestClient, world: dict[str, Any], make_token: TokenFactory
) -> None:
    admin = make_token("admin")
    ghost = {
        "deployment_id": "dep_nope",
        "version_id": "ver_nope",
        "job_id": "job_nope",
        "hostname": "nope.acme.test",
        "token_id": "tok_nope",
        "webhook_id": "whk_nope",
        "delivery_id": "msg_nope",
    }
    for method, path, kwargs in routes(ghost):
        if path in COLLECTIONS:
            continue
        token = admin if path.startswith(ADMIN_ONLY) else world["token"]
        response = client.request(
            method, path, headers=auth(token, **{"Idempotency-Key": "g"}), **kwargs
        )
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize("scope", ["admin", "deployments:write"])
def test_higher_scopes_imply_lower_ones(
    client: TestClient,
    world: dict[str, Any],
    make_token: TokenFactory,
    make_version: VersionFactory,
    scope: str,
) -> None:
    token = make_token(scope)
    for method, path, _ in routes(world):
        if method == "GET":
            expected = 403 if path.startswith(ADMIN_ONLY) and scope != "admin" else 200
            assert status_of(client, path, auth(token)) == expected, path
    created = client.post(
        "/api/v1/deployments",
        json={"name": f"by-{scope[:5]}", "kind": "static"},
        headers=auth(token),
    )
    assert created.status_code == 201, created.text
    version_id = make_version(created.json()["id"], "ready")
    promoted = client.post(
        f"/api/v1/deployments/{created.json()['id']}/versions/{version_id}/promote",
        headers=auth(token, **{"Idempotency-Key": f"imp-{scope}"}),
    )
    assert promoted.status_code == 202, promoted.text
    cancelled = client.post(
        f"/api/v1/jobs/{promoted.json()['job']['id']}/cancel", headers=auth(token)
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"


def test_token_scopes_are_validated(shipway_env: dict[str, str]) -> None:
    from shipway.auth.service import create_token, get_or_create_workspace
    from shipway.db import transaction
    from shipway.errors import InvalidInput

    for scopes in ([], ["deployments:delete"], ["admin", "root"]):
        with pytest.raises(InvalidInput), transaction() as session:
            ws = get_or_create_workspace(session, name="acme")
            create_token(session, workspace_id=ws.id, scopes=scopes)
