"""The basic path through the API on both databases."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import VersionFactory, auth


def test_promote_then_read_version(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    token = deployment["token"]
    version_id = make_version(deployment["id"], "ready")
    response = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        headers=auth(token, **{"Idempotency-Key": "k1"}),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["release"]["status"] == "DEPLOYING"
    assert body["job"]["state"] == "queued"
    listed = client.get(
        f"/api/v1/deployments/{deployment['id']}/versions", headers=auth(token)
    ).json()
    assert [v["id"] for v in listed["data"]] == [version_id]
    full = client.get(f"/versions/{version_id}".join(["/api/v1", ""]), headers=auth(token)).json()
    assert full["status"] == "DEPLOYING"
