"""``shipway tokens create|list|rotate|revoke`` against a real API server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from shipway.cli import app
from tests.test_cli_domains import api_url, run

__all__ = ["api_url"]  # the fixture


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tokens_lifecycle_from_the_cli(
    api_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("SHIPWAY_CONFIG", str(tmp_path / "config.toml"))
    made = CliRunner().invoke(
        app,
        ["tokens", "create", "--workspace", "acme", "--scope", "admin", "--expires-in", "2d"],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert made.exit_code == 0, made.output
    admin = made.stdout.strip().splitlines()[-1]
    made = CliRunner().invoke(
        app,
        ["tokens", "create", "--workspace", "acme", "--scope", "deployments:read", "--json"],
    )
    created = json.loads(made.stdout)
    assert created["expires_at"] is None

    listed = run(monkeypatch, api_url, admin, "tokens", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) >= {created["token_id"]}
    (mine,) = [row for row in rows.values() if row["expires_at"]]
    expires = datetime.fromisoformat(mine["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=1, hours=23) < expires - datetime.now(UTC) <= timedelta(days=2)

    rotated = run(
        monkeypatch, api_url, admin, "tokens", "rotate", created["token_id"], "--grace", "1h"
    )
    assert rotated.exit_code == 0, rotated.output
    new_secret = rotated.stdout.strip().splitlines()[-1]
    assert new_secret.startswith("shw_") and new_secret != created["token"]
    # Within the grace period both secrets work.
    for secret in (created["token"], new_secret):
        assert run(monkeypatch, api_url, secret, "deployments", "list").exit_code == 0

    revoked = run(monkeypatch, api_url, admin, "tokens", "revoke", created["token_id"])
    assert revoked.exit_code == 0, revoked.output
    refused = run(monkeypatch, api_url, created["token"], "deployments", "list")
    assert refused.exit_code == 3 and "revoked" in refused.output

    bad = run(monkeypatch, api_url, admin, "tokens", "rotate", created["token_id"], "--grace", "x")
    assert bad.exit_code == 2, bad.output
