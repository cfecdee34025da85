"""Automatic HTTPS end to end: a promoted environment's generated hostname and a custom
domain get certificates from a real ACME server (Debian's pebble) over HTTP-01 answered by
the router; public_url becomes https; the chain verifies to pebble's root over SNI; HTTP
redirects; an ACME failure is classified and never takes the site down."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shipway.config import get_settings
from tests.conftest import VersionFactory, auth
from tests.support import pebble
from tests.support.services import free_port
from tests.test_api_promote import accepted, promote, run
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.skipif(pebble.available() is not None, reason=str(pebble.available()))


@pytest.fixture(params=["sqlite"])  # the database paths are covered by test_api_domains
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    from tests.conftest import _migrate

    url = f"sqlite:///{tmp_path / 'shipway.db'}"
    _migrate(url, tmp_path)
    return url


@pytest.fixture
def ca(shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[pebble.Pebble]:
    """pebble issuing 1-hour certificates, the router's listeners on, ACME configured."""
    http_port, https_port = free_port(), free_port()
    with pebble.Pebble(http_port=http_port, validity_seconds=3600) as running:
        for name, value in {
            "SHIPWAY_ROUTER_HTTP_PORT": str(http_port),
            "SHIPWAY_ROUTER_HTTPS_PORT": str(https_port),
            "SHIPWAY_ACME_DIRECTORY_URL": running.directory_url,
            "SHIPWAY_ACME_CA_BUNDLE": str(running.listener_ca),
        }.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        from shipway.router.current import _router_for

        _router_for.cache_clear()
        yield running
        _router_for.cache_clear()


def relay_passes() -> Any:
    """What the relay runs: the host-routing task, then the certificates task."""
    from shipway.domains.renewal import certificates_pass
    from shipway.domains.routing import sync_hosts

    sync_hosts()
    report = certificates_pass()
    sync_hosts()
    return report


def domains(client: TestClient, deployment: dict[str, Any]) -> dict[str, Any]:
    answer = client.get(
        f"/api/v1/deployments/{deployment['id']}/environments/production/domains",
        headers=auth(deployment["token"]),
    )
    assert answer.status_code == 200, answer.text
    return {row["hostname"]: row for row in answer.json()["data"]}


def fetch(url: str, host: str, root: bytes) -> httpx.Response:
    context = ssl.create_default_context(cadata=root.decode())
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(url, headers={"Host": host}, extensions={"sni_hostname": host})


def test_an_environment_is_served_over_https_with_certificates_from_the_ca(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    ca: pebble.Pebble,
) -> None:
    settings = get_settings()
    version = make_version(deployment["id"], "ready")
    assert run(accepted(promote(client, deployment, version, "https-1"))["job"]["id"]) == (
        "succeeded"
    )
    added = client.post(
        f"/api/v1/deployments/{deployment['id']}/environments/production/domains",
        json={"hostname": "shop.example.test"},
        headers=auth(deployment["token"]),
    )
    assert added.status_code == 201, added.text
    assert added.json()["certificate"]["status"] == "pending"

    report = relay_passes()
    assert report is not None and report.failed == {}, report
    rows = domains(client, deployment)
    generated = next(h for h, row in rows.items() if row["kind"] == "generated")
    assert set(report.issued) == {generated, "shop.example.test"}
    for row in rows.values():
        certificate = row["certificate"]
        assert certificate["status"] == "issued" and certificate["source"] == "acme"
        assert certificate["issuer"].startswith("Pebble")
        assert certificate["next_attempt_at"] > certificate["not_before"]

    root = ca.root_pem()
    production = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()["environments"][0]
    assert production["public_url"] == f"https://{generated}:{settings.router_https_port}"
    assert httpx.get(production["route_url"]).text == "test site\n"  # its own port, plain
    for host in (generated, "shop.example.test"):
        url = f"https://127.0.0.1:{settings.router_https_port}/"
        answer = fetch(url, host, root)  # chain verified against pebble's root, by SNI
        assert answer.status_code == 200 and answer.text == "test site\n"
        plain = httpx.get(f"http://127.0.0.1:{settings.router_http_port}/x", headers={"Host": host})
        assert plain.status_code == 308
        assert plain.headers["location"] == f"https://{host}:{settings.router_https_port}/x"

    # The environment's policy: no redirect, HSTS on.
    policy = client.put(
        f"/api/v1/deployments/{deployment['id']}/environments/production/policy",
        json={"https": {"redirect": False, "hsts": True}},
        headers=auth(deployment["token"]),
    )
    assert policy.status_code == 200, policy.text
    relay_passes()
    plain = httpx.get(f"http://127.0.0.1:{settings.router_http_port}/", headers={"Host": generated})
    assert plain.status_code == 200
    secure = fetch(f"https://127.0.0.1:{settings.router_https_port}/", generated, root)
    assert secure.headers["strict-transport-security"] == "max-age=31536000"

    # The CA goes away: a new domain fails, classified; the others keep serving.
    ca.stop(keep_files=True)
    client.post(
        f"/api/v1/deployments/{deployment['id']}/environments/production/domains",
        json={"hostname": "late.example.test"},
        headers=auth(deployment["token"]),
    )
    report = relay_passes()
    assert report is not None and report.failed == {"late.example.test": "acme_unreachable"}
    late = domains(client, deployment)["late.example.test"]
    assert late["certificate"]["status"] == "failed"
    assert set(late["certificate"]["failure_diagnostics"]) == {"title", "description", "action"}
    assert late["certificate"]["next_attempt_at"]
    assert (
        httpx.get(
            f"http://127.0.0.1:{settings.router_http_port}/",
            headers={"Host": "late.example.test"},
        ).text
        == "test site\n"
    )  # routed over plain HTTP meanwhile
    answer = fetch(f"https://127.0.0.1:{settings.router_https_port}/", generated, root)
    assert answer.text == "test site\n"

    queue = client.get("/api/v1/queue", headers=auth(deployment["token"])).json()
    attention = {row["hostname"]: row for row in queue["certificates"]}
    assert {host: row["why"] for host, row in attention.items()} == {
        "late.example.test": "failing",
        generated: "expiring",  # pebble issues 1-hour certificates here: within 14 days
        "shop.example.test": "expiring",
    }
    assert attention["late.example.test"]["certificate"]["failure_reason"] == "acme_unreachable"

    samples = scrape(client)
    issued = rows[generated]["certificate"]["not_after"]
    expiry = value(
        samples, "shipway_certificate_expiry_timestamp_seconds", hostname=generated, source="acme"
    )
    assert expiry == datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
    assert value(samples, "shipway_certificate_failures", reason="acme_unreachable") == 1
    assert value(samples, "shipway_certificates", status="issued") == 2


def test_a_renewal_under_traffic_fails_no_request(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    ca: pebble.Pebble,
) -> None:
    """A short-lived certificate (1 h) is renewed while HTTPS requests flow: none fails, and
    the new certificate is served afterwards."""
    from datetime import timedelta

    from shipway.db import transaction
    from shipway.domains.models import Certificate
    from shipway.ids import utcnow

    settings = get_settings()
    version = make_version(deployment["id"], "ready")
    assert run(accepted(promote(client, deployment, version, "renew-1"))["job"]["id"]) == (
        "succeeded"
    )
    relay_passes()
    generated, row = next(iter(domains(client, deployment).items()))
    first = row["certificate"]
    assert first["status"] == "issued"
    # Renewal is due at two thirds of the hour; make it due now, as if 40 minutes passed.
    with transaction() as session:
        certificate = session.get(Certificate, generated)
        assert certificate is not None and certificate.next_attempt_at is not None
        assert certificate.next_attempt_at - utcnow() > timedelta(minutes=35)
        certificate.next_attempt_at = utcnow()
    root = ca.root_pem()
    url = f"https://127.0.0.1:{settings.router_https_port}/"
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                answer = fetch(url, generated, root)
                assert answer.text == "test site\n"
                served += 1
            except (httpx.HTTPError, AssertionError) as error:
                failures.append(repr(error))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        report = relay_passes()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert report is not None and report.issued == [generated]
    assert failures == [] and served > 0
    renewed = domains(client, deployment)[generated]["certificate"]
    assert renewed["not_after"] > first["not_after"]
    assert fetch(url, generated, root).status_code == 200
