"""``shipway config list|set|unset`` and ``shipway secrets rotate`` against a real API server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from shipway.cli import app
from shipway.config import get_settings
from tests.test_cli_domains import api_url, run  # noqa: F401  (the fixture)

SECRET = "cli-secret-4c1b7e9a2f"


def test_config_set_list_unset(
    api_url: str,  # noqa: F811
    deployment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("SHIPWAY_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("SHIPWAY_DEPLOYMENT", deployment["id"])
    token = deployment["token"]["Authorization"].removeprefix("Bearer ")

    plain = run(monkeypatch, api_url, token, "config", "set", "GREETING=hello world", "--json")
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["version"] == 1
    monkeypatch.setenv("SHIPWAY_API_URL", api_url)
    monkeypatch.setenv("SHIPWAY_TOKEN", token)
    secret = CliRunner().invoke(
        app, ["config", "set", "API_KEY=-", "--secret", "--json"], input=SECRET + "\n"
    )
    assert secret.exit_code == 0, secret.output
    assert SECRET not in secret.output

    listed = run(monkeypatch, api_url, token, "config", "list")
    assert listed.exit_code == 0, listed.output
    assert "hello world" in listed.stdout and "(secret, set)" in listed.stdout
    assert SECRET not in listed.output

    bad = run(monkeypatch, api_url, token, "config", "set", "1BAD=x")
    assert bad.exit_code != 0 and "invalid_config" in bad.output
    usage = run(monkeypatch, api_url, token, "config", "set", "NOVALUE")
    assert usage.exit_code != 0

    gone = run(monkeypatch, api_url, token, "config", "unset", "GREETING", "--json")
    assert gone.exit_code == 0, gone.output
    assert [row["name"] for row in json.loads(gone.stdout)["data"]] == ["API_KEY"]

    # rotation through the CLI: a new key first, rotate, the old key dropped
    from shipway import crypto

    old = crypto.key_file(get_settings().data_dir).read_text().strip()
    new = crypto.generate_key()
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", f"{new},{old}")
    get_settings.cache_clear()
    rotated = CliRunner().invoke(app, ["secrets", "rotate", "--json"])
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["config_versions.secrets"] == 2  # v2 and v3 hold one
    monkeypatch.setenv("SHIPWAY_SECRETS_KEYS", new)
    get_settings.cache_clear()
    from shipway.config_vars.service import environment_of
    from shipway.db import transaction

    with transaction() as session:
        env = environment_of(
            session, deployment_id=deployment["id"], environment="production", number=3
        )
    assert env == {"API_KEY": SECRET}
