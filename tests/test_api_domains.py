"""Domains of environments (GET/POST/DELETE …/environments/{env}/domains): the generated
hostname, custom domains validated, one environment per domain, tenants kept apart."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shipway.domains.hostnames import generated_hostname, normalize_hostname
from shipway.errors import InvalidInput
from tests.conftest import TokenFactory, auth
from tests.test_api_auth import assert_error


def url(deployment: dict[str, Any], env: str = "production") -> str:
    return f"/api/v1/deployments/{deployment['id']}/environments/{env}/domains"


def add(
    client: TestClient, deployment: dict[str, Any], hostname: str, env: str = "production"
) -> Any:
    return client.post(
        url(deployment, env), json={"hostname": hostname}, headers=auth(deployment["token"])
    )


def listed(
    client: TestClient, deployment: dict[str, Any], env: str = "production"
) -> list[dict[str, Any]]:
    response = client.get(url(deployment, env), headers=auth(deployment["token"]))
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def domain_rows() -> int:
    from shipway.db import transaction
    from shipway.domains.models import Domain

    with transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Domain)) or 0)


def test_an_environment_has_a_generated_hostname_under_the_apps_domain(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    rows = listed(client, deployment)
    assert [row["kind"] for row in rows] == ["generated"]
    hostname = rows[0]["hostname"]
    tail = deployment["id"].rsplit("_", 1)[-1][-8:]
    assert hostname == f"production.site-{tail}.shipway.localhost"
    assert rows[0]["environment"] == "production" and rows[0]["deployment_id"] == deployment["id"]
    assert listed(client, deployment) == rows  # made once, stable


def test_custom_domains_are_added_listed_and_removed(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    created = add(client, deployment, "WWW.Example.COM.")
    assert created.status_code == 201, created.text
    assert created.json()["hostname"] == "www.example.com"
    assert created.json()["kind"] == "custom"
    assert add(client, deployment, "api.example.com").status_code == 201
    assert [row["hostname"] for row in listed(client, deployment)][1:] == [
        "api.example.com",
        "www.example.com",
    ]
    gone = client.delete(url(deployment) + "/www.example.com", headers=auth(deployment["token"]))
    assert gone.status_code == 200, gone.text
    assert gone.json()["hostname"] == "www.example.com"
    assert [row["hostname"] for row in listed(client, deployment)][1:] == ["api.example.com"]
    assert_error(
        client.delete(url(deployment) + "/www.example.com", headers=auth(deployment["token"])),
        404,
        "not_found",
    )


def test_a_domain_belongs_to_one_environment(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    assert add(client, deployment, "shop.example.com").status_code == 201
    assert_error(add(client, deployment, "shop.example.com"), 409, "domain_exists")
    assert_error(add(client, deployment, "shop.example.com", env="staging"), 409, "domain_taken")


def test_another_workspace_cannot_see_take_or_remove_a_domain(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    assert add(client, deployment, "mine.example.com").status_code == 201
    token = make_token("deployments:write", workspace="intruder")
    other = client.post(
        "/api/v1/deployments", json={"name": "other", "kind": "static"}, headers=auth(token)
    ).json()
    other["token"] = token
    taken = assert_error(add(client, other, "mine.example.com"), 409, "domain_taken")
    assert deployment["id"] not in str(taken) and "production" not in taken["message"]
    for response in (
        client.get(url(deployment), headers=auth(token)),
        client.delete(url(deployment) + "/mine.example.com", headers=auth(token)),
        client.delete(url(other) + "/mine.example.com", headers=auth(token)),
    ):
        assert_error(response, 404, "not_found")
    assert "mine.example.com" in [row["hostname"] for row in listed(client, deployment)]


@pytest.mark.parametrize(
    "hostname",
    [
        "localhost",
        "127.0.0.1",
        "*.example.com",
        "-bad.example.com",
        "bad_.example.com",
        "a..example.com",
        "exämple.com",
        "x" * 64 + ".example.com",
        "example.123",
        "production.site-abc.shipway.localhost",
        "",
    ],
)
def test_a_bad_hostname_is_a_422_and_adds_nothing(
    client: TestClient, deployment: dict[str, Any], hostname: str
) -> None:
    listed(client, deployment)  # the generated row exists before
    before = domain_rows()
    assert_error(add(client, deployment, hostname), 422)
    assert domain_rows() == before


def test_the_generated_hostname_cannot_be_removed(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    generated = listed(client, deployment)[0]["hostname"]
    assert_error(
        client.delete(url(deployment) + f"/{generated}", headers=auth(deployment["token"])),
        409,
        "domain_generated",
    )


def test_a_read_token_lists_but_cannot_add(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    reader = make_token("deployments:read")
    assert client.get(url(deployment), headers=auth(reader)).status_code == 200
    assert_error(
        client.post(url(deployment), json={"hostname": "r.example.com"}, headers=auth(reader)),
        403,
    )


def test_hostname_rules() -> None:
    assert normalize_hostname(" App.Example.com. ", apps_domain="apps.test") == "app.example.com"
    assert normalize_hostname("xn--exmple-cua.com", apps_domain="apps.test") == "xn--exmple-cua.com"
    with pytest.raises(InvalidInput, match="generated by shipway"):
        normalize_hostname("x.apps.test", apps_domain="apps.test")
    name = generated_hostname(
        deployment_id="dep_ABCDEFGH12345678",
        deployment_name="My Site_2.0",
        environment="staging",
        apps_domain="Apps.Test",
    )
    assert name == "staging.my-site-2-0-12345678.apps.test"
    assert normalize_hostname(name, apps_domain="other.test") == name
