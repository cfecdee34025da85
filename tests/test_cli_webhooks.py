"""``shipway webhooks …`` against a real API server and a real receiver on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipway.config import get_settings
from tests.conftest import TokenFactory
from tests.support.webhook_receiver import running_receiver, verify
from tests.test_cli_domains import api_url, run

__all__ = ["api_url"]
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_webhooks_commands_end_to_end(
    api_url: str,
    make_token: TokenFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from shipway.webhooks.delivery import webhooks_pass
    from tests.support.processes import wait_until

    monkeypatch.setenv("SHIPWAY_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("SHIPWAY_WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    token = make_token("admin")["Authorization"].removeprefix("Bearer ")
    with running_receiver() as receiver:
        made = run(
            monkeypatch,
            api_url,
            token,
            "webhooks",
            "create",
            receiver.url,
            "-e",
            "release.active",
            "-e",
            "job.stuck",
        )
        assert made.exit_code == 0, made.output
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_")
        hook = made.stdout.split()[1]
        listed = run(monkeypatch, api_url, token, "webhooks", "list", "--json")
        assert [row["id"] for row in json.loads(listed.stdout)["data"]] == [hook]
        assert secret not in listed.stdout

        tested = run(monkeypatch, api_url, token, "webhooks", "test", hook, "--json")
        assert tested.exit_code == 0, tested.output
        msg = json.loads(tested.stdout)["id"]

        def arrived() -> bool:
            webhooks_pass()
            return bool(receiver.received)

        wait_until(arrived, timeout=15, message="the test delivery")
        assert verify(secret, receiver.received[0].headers, receiver.received[0].body)
        shown = run(monkeypatch, api_url, token, "webhooks", "deliveries", hook)
        assert shown.exit_code == 0 and msg in shown.stdout and "200" in shown.stdout, shown.output
        again = run(monkeypatch, api_url, token, "webhooks", "redeliver", hook, msg)
        assert again.exit_code == 0 and "queued" in again.stdout, again.output
        rotated = run(monkeypatch, api_url, token, "webhooks", "rotate", hook, "--overlap", "1h")
        assert rotated.exit_code == 0 and rotated.stdout.strip().splitlines()[-1] != secret
        off = run(monkeypatch, api_url, token, "webhooks", "update", hook, "--disable", "--json")
        assert json.loads(off.stdout)["enabled"] is False
        gone = run(monkeypatch, api_url, token, "webhooks", "delete", hook)
        assert gone.exit_code == 0, gone.output
        refused = run(
            monkeypatch, api_url, token, "webhooks", "create", "ftp://x", "-e", "job.stuck"
        )
        assert refused.exit_code != 0 and "http" in refused.output
