"""Token lifecycle through the API: expiry, revoke, rotate, last-used time, rate limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from shipway.config import get_settings
from tests.conftest import TokenFactory, auth
from tests.test_api_auth import assert_error


def _row(token_id: str) -> Any:
    from shipway.auth.models import ApiToken
    from shipway.db import transaction

    with transaction() as session:
        row = session.get(ApiToken, token_id)
        session.expunge(row)
        return row


def _set(token_id: str, **values: Any) -> None:
    from shipway.auth.models import ApiToken
    from shipway.db import transaction

    with transaction() as session:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(**values))


def _bearer(created: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {created['secret']}"}


def test_expiry_revoke_and_rotate(client: TestClient, make_token: TokenFactory) -> None:
    admin = make_token("admin")
    created = client.post(
        "/api/v1/tokens",
        json={"scopes": ["deployments:write"], "name": "ci", "expires_in_seconds": 3600},
        headers=auth(admin),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("shw_") and body["name"] == "ci"
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert client.get("/api/v1/deployments", headers=_bearer(body)).status_code == 200

    # The list shows metadata and never a secret.
    listed = client.get("/api/v1/tokens", headers=auth(admin)).json()["data"]
    assert {row["id"] for row in listed} == {admin["token_id"], body["id"]}
    assert all("secret" not in row and "secret_sha256" not in row for row in listed)

    # Expired → 401 in the error shape, with the reason.
    _set(body["id"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
    error = assert_error(
        client.get("/api/v1/deployments", headers=_bearer(body)), 401, "unauthenticated"
    )
    assert error["details"] == {"reason": "expired"}

    # Rotate with no grace: the old secret is refused at once, the new one works.
    other = client.post(
        "/api/v1/tokens", json={"scopes": ["deployments:read"], "name": "bot"}, headers=auth(admin)
    ).json()
    rotated = client.post(f"/api/v1/tokens/{other['id']}/rotate", headers=auth(admin))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert (new["name"], new["scopes"], new["expires_at"]) == ("bot", ["deployments:read"], None)
    assert new["secret"] != other["secret"]
    error = assert_error(
        client.get("/api/v1/deployments", headers=_bearer(other)), 401, "unauthenticated"
    )
    assert error["details"] == {"reason": "revoked"}
    assert client.get("/api/v1/deployments", headers=_bearer(new)).status_code == 200
    assert _row(other["id"]).rotated_to == new["id"]
    again = client.post(f"/api/v1/tokens/{other['id']}/rotate", headers=auth(admin))
    assert_error(again, 409, "conflict")

    # Rotate with a grace period: both work until it ends or the old one is revoked.
    graced = client.post(
        f"/api/v1/tokens/{new['id']}/rotate", json={"grace_seconds": 600}, headers=auth(admin)
    ).json()
    assert client.get("/api/v1/deployments", headers=_bearer(new)).status_code == 200
    assert client.get("/api/v1/deployments", headers=_bearer(graced)).status_code == 200
    revoked = client.post(f"/api/v1/tokens/{new['id']}/revoke", headers=auth(admin))
    assert revoked.status_code == 200, revoked.text
    assert_error(client.get("/api/v1/deployments", headers=_bearer(new)), 401, "unauthenticated")
    # Revoke is idempotent: the first revocation time stays.
    twice = client.post(f"/api/v1/tokens/{new['id']}/revoke", headers=auth(admin))
    assert twice.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert client.get("/api/v1/deployments", headers=_bearer(graced)).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_expiry_in_the_past_or_unknown_scope_is_422(
    client: TestClient, make_token: TokenFactory
) -> None:
    admin = make_token("admin")
    bodies: list[dict[str, Any]] = [
        {"scopes": ["deployments:read"], "expires_in_seconds": 0},
        {"scopes": ["root"]},
        {"scopes": []},
    ]
    for body in bodies:
        response = client.post("/api/v1/tokens", json=body, headers=auth(admin))
        assert response.status_code == 422, (body, response.text)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_last_used_is_written_at_most_once_a_period(
    client: TestClient, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = make_token("deployments:read")
    assert _row(token["token_id"]).last_used_at is None
    assert client.get("/api/v1/deployments", headers=auth(token)).status_code == 200
    first = _row(token["token_id"]).last_used_at
    assert first is not None
    for _ in range(5):
        client.get("/api/v1/deployments", headers=auth(token))
    assert _row(token["token_id"]).last_used_at == first  # no write per request
    # Once the period has passed, the next request records the time again.
    _set(token["token_id"], last_used_at=first - timedelta(seconds=61))
    client.get("/api/v1/deployments", headers=auth(token))
    assert _row(token["token_id"]).last_used_at > first


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rate_limit_answers_429_with_retry_after(
    client: TestClient, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE", "6")  # one per 10 s
    monkeypatch.setenv("SHIPWAY_TOKEN_RATE_LIMIT_BURST", "3")
    get_settings.cache_clear()
    token, other = make_token("deployments:read"), make_token("deployments:read")
    for _ in range(3):
        assert client.get("/api/v1/deployments", headers=auth(token)).status_code == 200
    refused = client.get("/api/v1/deployments", headers=auth(token))
    error = assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert 0 < error["details"]["retry_after_seconds"] <= 10
    assert error["details"]["limit_per_minute"] == 6
    # Writes are refused the same way, before any work; other tokens are not affected.
    created = client.post(
        "/api/v1/deployments", json={"name": "nope", "kind": "static"}, headers=auth(token)
    )
    assert_error(created, 429, "rate_limited")
    assert client.get("/api/v1/deployments", headers=auth(other)).status_code == 200
    # 0 turns it off.
    monkeypatch.setenv("SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE", "0")
    get_settings.cache_clear()
    assert client.get("/api/v1/deployments", headers=auth(token)).status_code == 200


def test_local_limiter_is_a_bucket_refilled_at_the_rate() -> None:
    from shipway.auth.ratelimit import Limit, LocalLimiter

    limiter, limit = LocalLimiter(), Limit(per_minute=60, burst=2)  # 1 a second, 2 at once
    assert limiter.wait("t", limit, now=100.0) == 0
    assert limiter.wait("t", limit, now=100.0) == 0
    assert limiter.wait("t", limit, now=100.0) == pytest.approx(1.0)
    assert limiter.wait("t", limit, now=100.5) == pytest.approx(0.5)
    assert limiter.wait("t", limit, now=101.0) == 0  # one refilled
    assert limiter.wait("u", limit, now=101.0) == 0  # per key


def test_redis_limiter_is_shared_by_processes_and_falls_back(tmp_path: Path) -> None:
    """Two limiters on one Redis (two API processes) share one bucket; no Redis: local."""
    from shipway.auth.ratelimit import Limit, LocalLimiter, RedisLimiter
    from tests.support.services import free_port, start_redis

    redis = start_redis(tmp_path)
    try:
        one = RedisLimiter(redis.url, LocalLimiter())
        two = RedisLimiter(redis.url, LocalLimiter())
        limit = Limit(per_minute=60, burst=4)
        admitted = [(one if i % 2 else two).wait("tok_shared", limit) == 0 for i in range(8)]
        assert admitted.count(True) == 4, admitted
        assert 0 < one.wait("tok_shared", limit) <= 1.0
        assert one.wait("tok_other", limit) == 0
    finally:
        redis.stop()
    down = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", LocalLimiter())
    results = [down.wait("tok_x", Limit(per_minute=60, burst=2)) == 0 for _ in range(3)]
    assert results == [True, True, False]
