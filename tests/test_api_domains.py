"""Domains of environments (GET/POST/DELETE …/environments/{env}/domains): the generated
hostname, custom domains validated, one environment per domain, tenants kept apart."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shipway.domains.hostnames import generated_hostname, normalize_hostname
from shipway.errors import InvalidInput
from tests.conftest import TokenFactory, auth
from tests.support.certs import ThrowawayCA
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


BAD_HOSTNAMES = [
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
]


def test_a_bad_hostname_is_a_422_and_adds_nothing(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    listed(client, deployment)  # the generated row exists before
    before = domain_rows()
    for hostname in BAD_HOSTNAMES:
        error = assert_error(add(client, deployment, hostname), 422)
        assert hostname in str(error) or not hostname, error
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


# --------------------------------------------------------------------------- certificates


def cert_url(deployment: dict[str, Any], hostname: str) -> str:
    return f"{url(deployment)}/{hostname}/certificate"


def test_an_uploaded_certificate_is_served_and_its_key_never_answered(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    ca = ThrowawayCA()
    chain, key = ca.issue(["shop.example.com"])
    assert add(client, deployment, "shop.example.com").status_code == 201
    answer = client.put(
        cert_url(deployment, "shop.example.com"),
        json={"certificate": chain, "private_key": key},
        headers=auth(deployment["token"]),
    )
    assert answer.status_code == 200, answer.text
    certificate = answer.json()["certificate"]
    assert certificate["source"] == "uploaded" and certificate["status"] == "issued"
    assert certificate["issuer"] == "shipway test CA" and certificate["not_after"]
    rows = {row["hostname"]: row for row in listed(client, deployment)}
    assert rows["shop.example.com"]["certificate"] == certificate
    for text in (answer.text, json.dumps(listed(client, deployment))):
        assert "PRIVATE KEY" not in text and key.splitlines()[1] not in text

    dropped = client.delete(
        cert_url(deployment, "shop.example.com"), headers=auth(deployment["token"])
    )
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["certificate"] is None  # no ACME configured: plain HTTP again


@pytest.mark.parametrize(
    "problem", ["other key", "other name", "expired", "not pem", "encrypted key", "wildcard ok"]
)
def test_a_bad_certificate_upload_is_a_422(
    client: TestClient, deployment: dict[str, Any], problem: str
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = ThrowawayCA()
    chain, key = ca.issue(["shop.example.com"])
    if problem == "other key":
        key = ca.issue(["shop.example.com"])[1]
    elif problem == "other name":
        chain, key = ca.issue(["www.example.com"])
    elif problem == "expired":
        chain, key = ca.issue(
            ["shop.example.com"], starts=timedelta(days=-3), valid_for=timedelta(days=1)
        )
    elif problem == "not pem":
        chain = "hello"
    elif problem == "encrypted key":
        key = (
            ec.generate_private_key(ec.SECP256R1())
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
            .decode()
        )
    elif problem == "wildcard ok":
        chain, key = ca.issue(["*.example.com"])
    assert add(client, deployment, "shop.example.com").status_code == 201
    answer = client.put(
        cert_url(deployment, "shop.example.com"),
        json={"certificate": chain, "private_key": key},
        headers=auth(deployment["token"]),
    )
    if problem == "wildcard ok":
        assert answer.status_code == 200, answer.text
        return
    error = assert_error(answer, 422, "certificate_invalid")
    assert "PRIVATE KEY" not in answer.text
    assert problem != "other key" or "does not belong" in error["message"]
    rows = {row["hostname"]: row for row in listed(client, deployment)}
    assert rows["shop.example.com"]["certificate"] is None  # nothing stored


def test_with_acme_configured_every_hostname_asks_for_a_certificate(
    client: TestClient, deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipway.config import get_settings

    monkeypatch.setenv("SHIPWAY_ACME_DIRECTORY_URL", "https://127.0.0.1:1/dir")
    get_settings.cache_clear()
    try:
        assert add(client, deployment, "shop.example.com").status_code == 201
        rows = listed(client, deployment)
    finally:
        monkeypatch.delenv("SHIPWAY_ACME_DIRECTORY_URL")
        get_settings.cache_clear()
    assert [row["certificate"]["status"] for row in rows] == ["pending", "pending"]
    assert all(row["certificate"]["source"] == "acme" for row in rows)
