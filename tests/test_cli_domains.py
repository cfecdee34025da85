"""``shipway domains list|add|remove`` against a real API server (uvicorn on a free port)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from shipway.cli import app
from tests.support.processes import wait_until
from tests.support.services import free_port


@pytest.fixture
def api_url(shipway_env: dict[str, str]) -> Iterator[str]:
    from shipway.api import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, message="uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run(monkeypatch: pytest.MonkeyPatch, api_url: str, token: str, *args: str) -> Any:
    monkeypatch.setenv("SHIPWAY_API_URL", api_url)
    monkeypatch.setenv("SHIPWAY_TOKEN", token)
    return CliRunner().invoke(app, list(args))


def test_domains_add_list_remove(
    api_url: str,
    deployment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("SHIPWAY_CONFIG", str(tmp_path / "config.toml"))
    token = deployment["token"]["Authorization"].removeprefix("Bearer ")
    dep = deployment["id"]

    added = run(monkeypatch, api_url, token, "domains", "add", dep, "Shop.Example.com", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["hostname"] == "shop.example.com"

    listed = run(monkeypatch, api_url, token, "domains", "list", dep, "--json")
    assert listed.exit_code == 0, listed.output
    assert [row["kind"] for row in json.loads(listed.stdout)] == ["generated", "custom"]

    table = run(monkeypatch, api_url, token, "domains", "list", dep)
    assert "shop.example.com" in table.stdout and "generated" in table.stdout

    again = run(monkeypatch, api_url, token, "domains", "add", dep, "shop.example.com")
    assert again.exit_code == 3, again.output  # ExitCode.API_ERROR
    assert "409 domain_exists" in again.stderr

    bad = run(monkeypatch, api_url, token, "domains", "add", dep, "not a host")
    assert bad.exit_code == 3 and "422" in bad.stderr

    removed = run(monkeypatch, api_url, token, "domains", "remove", dep, "shop.example.com")
    assert removed.exit_code == 0, removed.output
    assert "removed shop.example.com" in removed.stdout
    listed = run(monkeypatch, api_url, token, "domains", "list", dep, "--json")
    assert [row["kind"] for row in json.loads(listed.stdout)] == ["generated"]
