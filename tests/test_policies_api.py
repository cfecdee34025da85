"""Environment policy API (GET/PUT …/environments/{name}/policy) and PATCH /deployments/{id}."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import TokenFactory, auth
from tests.test_api_auth import assert_error

FULL_POLICY = {
    "strategy": {"type": "canary", "steps": [{"weight": 10, "pause_seconds": 30}]},
    "health": {
        "interval_seconds": 5,
        "failure_threshold": 2,
        "success_threshold": 2,
        "timeout_seconds": 1,
    },
    "auto_rollback_on_unhealthy": True,
    "auto_promote": {
        "to_environment": "production",
        "after_healthy_seconds": 600,
        "strategy": None,
    },
    "https": {"redirect": False, "hsts": True},
}
DEFAULTS = {
    "strategy": None,
    "health": {
        "interval_seconds": 10.0,
        "failure_threshold": 3,
        "success_threshold": 1,
        "timeout_seconds": 2.0,
    },
    "auto_rollback_on_unhealthy": False,
    "auto_promote": None,
    "https": {"redirect": True, "hsts": False},
}


def policy_url(deployment: dict[str, Any], env: str) -> str:
    return f"/api/v1/deployments/{deployment['id']}/environments/{env}/policy"


def put_policy(
    client: TestClient, deployment: dict[str, Any], env: str, body: Any
) -> dict[str, Any]:
    response = client.put(policy_url(deployment, env), json=body, headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    return dict(response.json())


def environment_events(deployment_id: str) -> list[Any]:
    from shipway.db import transaction
    from shipway.events.models import Event

    with transaction() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.deployment_id == deployment_id, Event.subject_type == "environment")
            .order_by(Event.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def test_default_policy_is_readable(client: TestClient, deployment: dict[str, Any]) -> None:
    response = client.get(policy_url(deployment, "production"), headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "deployment_id": deployment["id"],
        "environment": "production",
        "policy": DEFAULTS,
    }
    shown = client.get(f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"]))
    assert shown.json()["environments"][0]["policy"] == DEFAULTS


def test_put_replaces_the_policy_creates_the_environment_and_is_audited(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    body = put_policy(client, deployment, "staging", FULL_POLICY)
    assert body["environment"] == "staging"
    expected = {
        **FULL_POLICY,
        "strategy": {
            "type": "canary",
            "steps": [{"weight": 10, "pause_seconds": 30.0}],
            "analysis": body["policy"]["strategy"]["analysis"],
        },
    }
    assert body["policy"] == expected
    assert body["policy"]["strategy"]["analysis"]["interval_seconds"] == 10  # its defaults
    again = client.get(policy_url(deployment, "staging"), headers=auth(deployment["token"]))
    assert again.json() == body
    shown = client.get(f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"]))
    envs = {e["name"]: e for e in shown.json()["environments"]}
    assert set(envs) == {"production", "staging"}
    assert envs["staging"]["policy"] == expected and envs["staging"]["status"] is None
    assert envs["production"]["policy"] == DEFAULTS

    # Full replace: what is absent goes back to its default.
    replaced = put_policy(client, deployment, "staging", {"auto_rollback_on_unhealthy": True})
    assert replaced["policy"] == {**DEFAULTS, "auto_rollback_on_unhealthy": True}

    events = environment_events(deployment["id"])
    assert [e.to_state for e in events] == ["policy_set", "policy_set"]
    assert events[0].actor == f"token:{deployment['token']['token_id']}"
    assert events[0].data["environment"] == "staging"
    assert events[0].data["before"] is None and events[0].data["after"] == expected
    assert events[1].data["before"] == expected


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"health": {"interval_seconds": 0}}, "interval_seconds"),
        ({"health": {"failure_threshold": 0}}, "failure_threshold"),
        ({"health": {"timeout_seconds": 60}}, "timeout_seconds"),
        ({"health": {"nope": 1}}, "nope"),
        ({"auto_rollback_on_unhealthy": "sometimes"}, "auto_rollback_on_unhealthy"),
        ({"strategy": {"type": "blue_green"}}, "strategy"),
        ({"strategy": {"type": "canary", "steps": []}}, "steps"),
        ({"strategy": {"type": "canary", "steps": [{"weight": 50}, {"weight": 20}]}}, "strategy"),
        ({"auto_promote": {"after_healthy_seconds": 5}}, "to_environment"),
        ({"auto_promote": {"to_environment": "Prod!"}}, "to_environment"),
        ({"auto_promote": {"to_environment": "prod", "after_healthy_seconds": -1}}, "after"),
        (
            {"auto_promote": {"to_environment": "prod", "strategy": {"type": "x"}}},
            "strategy",
        ),
        ({"unknown": True}, "unknown"),
        ([], "body"),
    ],
)
def test_invalid_policies_are_422(
    client: TestClient, deployment: dict[str, Any], body: Any, where: str
) -> None:
    response = client.put(
        policy_url(deployment, "staging"), json=body, headers=auth(deployment["token"])
    )
    error = assert_error(response, 422, "validation_error")
    assert where in str(error["details"]), error
    assert environment_events(deployment["id"]) == []
    missing = client.get(policy_url(deployment, "staging"), headers=auth(deployment["token"]))
    assert_error(missing, 404, "not_found")  # nothing was created


def test_auto_promote_to_itself_and_bad_environment_names_are_422(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    response = client.put(
        policy_url(deployment, "staging"),
        json={"auto_promote": {"to_environment": "staging"}},
        headers=auth(deployment["token"]),
    )
    assert_error(response, 422, "invalid_input")
    response = client.put(
        policy_url(deployment, "Bad_Name"), json={}, headers=auth(deployment["token"])
    )
    assert_error(response, 422, "validation_error")


def test_policy_auth_scopes_and_workspaces(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    url = policy_url(deployment, "production")
    assert_error(client.get(url), 401, "unauthenticated")
    assert_error(client.put(url, json={}), 401, "unauthenticated")
    reader = make_token("deployments:read")
    assert client.get(url, headers=auth(reader)).status_code == 200
    error = assert_error(client.put(url, json={}, headers=auth(reader)), 403, "insufficient_scope")
    assert error["details"]["required_scope"] == "deployments:write"
    stranger = make_token("admin", workspace="globex")
    assert_error(client.get(url, headers=auth(stranger)), 404, "not_found")
    assert_error(client.put(url, json={}, headers=auth(stranger)), 404, "not_found")
    ghost = "/api/v1/deployments/dep_nope/environments/production/policy"
    assert_error(client.put(ghost, json={}, headers=auth(deployment["token"])), 404, "not_found")
    assert environment_events(deployment["id"]) == []


# --------------------------------------------------------------------------- PATCH deployment


def test_patch_changes_runtime_settings_and_records_them(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    url = f"/api/v1/deployments/{deployment['id']}"
    response = client.patch(
        url,
        json={
            "replicas": 3,
            "runtime_port": 9000,
            "runtime_command": "httpd -f -p 9000",
            "health_check_path": "/healthz",
            "resources": {"memory_mb": 128},
            "health": {"unhealthy_threshold": 5},
        },
        headers=auth(deployment["token"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["replicas"] == 3 and body["runtime_port"] == 9000
    assert body["runtime_command"] == "httpd -f -p 9000"
    assert body["health_check_path"] == "/healthz"
    assert body["resources"] == {"memory_mb": 128}
    health = body["settings"]["health"]
    assert health["unhealthy_threshold"] == 5
    assert health["healthy_threshold"] == deployment["settings"]["health"]["healthy_threshold"]

    # Absent fields stay; runtime_command may be cleared with null.
    response = client.patch(url, json={"runtime_command": None}, headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    assert response.json()["runtime_command"] is None and response.json()["replicas"] == 3

    from shipway.db import transaction
    from shipway.events.models import Event

    with transaction() as session:
        updates = session.scalars(
            select(Event).where(Event.subject_id == deployment["id"], Event.to_state == "updated")
        ).all()
        assert len(updates) == 2
        assert updates[0].data["changes"]["replicas"] == {"from": 1, "to": 3}


@pytest.mark.parametrize(
    "body",
    [
        {"replicas": 0},
        {"replicas": None},
        {"runtime_port": 70000},
        {"health_check_path": "healthz"},
        {"resources": {"memory_mb": 0}},
        {"health": {"interval_seconds": 0}},
        {"health": {"surprise": 1}},
        {"kind": "container"},
        {"name": "renamed"},
        {"placement": ["zone==a"]},
        {"placement": ["node.labels.zone=a"]},
        {"placement": ["node.labels.zone==a; rm -rf /"]},
        {"placement": [f"node.labels.z{i}==a" for i in range(11)]},
        {"placement": None},
    ],
)
def test_patch_validates_like_create(
    client: TestClient, deployment: dict[str, Any], body: dict[str, Any]
) -> None:
    url = f"/api/v1/deployments/{deployment['id']}"
    assert_error(client.patch(url, json=body, headers=auth(deployment["token"])), 422)
    assert client.get(url, headers=auth(deployment["token"])).json()["replicas"] == 1


def test_patch_auth(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    url = f"/api/v1/deployments/{deployment['id']}"
    assert_error(client.patch(url, json={"replicas": 2}), 401, "unauthenticated")
    reader = make_token("deployments:read")
    assert_error(client.patch(url, json={"replicas": 2}, headers=auth(reader)), 403)
    stranger = make_token("admin", workspace="globex")
    assert_error(client.patch(url, json={"replicas": 2}, headers=auth(stranger)), 404, "not_found")


def test_placement_constraints_are_kept_and_changed_with_the_deployment(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    url = f"/api/v1/deployments/{deployment['id']}"
    assert deployment["settings"]["placement"] == []
    wanted = ["node.labels.zone==a", "node.role != manager"]
    response = client.patch(url, json={"placement": wanted}, headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["placement"] == wanted
    assert response.json()["settings"]["health"] == deployment["settings"]["health"]
    response = client.patch(url, json={"placement": []}, headers=auth(deployment["token"]))
    assert response.json()["settings"]["placement"] == []
