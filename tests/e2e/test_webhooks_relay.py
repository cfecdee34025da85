"""The webhook lane of a real ``shipway relay`` process: a real API, PostgreSQL, a receiver."""

from __future__ import annotations

import json

import pytest

from shipway.config import get_settings
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, seed_ready_version
from tests.support.processes import wait_until
from tests.support.webhook_receiver import running_receiver, verify

pytestmark = pytest.mark.e2e


def test_shipway_relay_delivers_signed_events(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.settings["SHIPWAY_WEBHOOK_ALLOW_PRIVATE"] = "true"  # the receiver is on loopback
    monkeypatch.setenv("SHIPWAY_WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    api = stack.start_api()
    relay = stack.start_relay()
    relay.wait_for_log("webhooks started")
    with running_receiver() as receiver, api.client(api_token("admin")) as client:
        dep = client.post("/api/v1/deployments", json={"name": "hooked", "kind": "static"})
        assert dep.status_code == 201, dep.text
        made = client.post(
            "/api/v1/webhooks", json={"url": receiver.url, "event_types": ["version.ready"]}
        )
        assert made.status_code == 201, made.text
        version = seed_ready_version(dep.json()["id"], image="shipway-test/never-run:1")
        wait_until(lambda: receiver.received, timeout=30, message="the relay's delivery")
        request = receiver.received[0]
        assert verify(made.json()["secret"], request.headers, request.body)
        body = json.loads(request.body)
        assert body["type"] == "version.ready" and body["data"]["version_id"] == version

        def logged() -> list[dict[str, object]] | None:
            page = client.get(f"/api/v1/webhooks/{made.json()['id']}/deliveries").json()
            return page["data"] if page["data"][0]["state"] == "succeeded" else None

        rows = wait_until(logged, timeout=10, message="the delivery logged as succeeded")
        assert rows[0]["id"] == request.headers["webhook-id"]
