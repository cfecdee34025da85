"""Embedded mode: ``shipway up`` alone (SQLite, filesystem transport, one worker) runs a promote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack, wait_for_api
from tests.e2e.helpers import owner_pid, seed_ready_version
from tests.support.processes import executable, wait_until
from tests.support.services import free_port

pytestmark = pytest.mark.e2e


def test_shipway_up_promotes_a_version_to_active(embedded: Stack, static_image: str) -> None:
    data_dir = Path(embedded.settings["SHIPWAY_DATA_DIR"])
    port = free_port()
    up = embedded.supervisor.spawn(
        "up",
        [executable("shipway"), "up", "--host", "127.0.0.1", "--port", str(port)],
        env=embedded.env,
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_for_api(up, base_url, timeout=60)

    created = subprocess.run(
        [
            executable("shipway"),
            "tokens",
            "create",
            "--workspace",
            "acme",
            "--scope",
            "deployments:write",
            "--json",
        ],
        env=embedded.env,
        cwd=embedded.supervisor.log_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = json.loads(created.stdout)["token"]
    client = httpx.Client(
        base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )

    deployment = client.post("/deployments", json={"name": "site", "kind": "static"})
    assert deployment.status_code == 201, deployment.text
    deployment_id = deployment.json()["id"]
    version_id = seed_ready_version(deployment_id, image=static_image)  # same SQLite file

    promoted = client.post(
        f"/deployments/{deployment_id}/versions/{version_id}/promote",
        json={"environment": "production"},
        headers={"Idempotency-Key": "embedded-1"},
    )
    assert promoted.status_code == 202, promoted.text
    job_id = promoted.json()["job"]["id"]

    def active() -> dict[str, object] | None:
        body = client.get(f"/versions/{version_id}").json()
        return body if body["status"] == "ACTIVE" else None

    version = wait_until(
        active, timeout=60, interval=0.2, message=lambda: f"still:\n{up.log_tail()}"
    )
    assert version["deployed_at"] is not None

    job = client.get(f"/jobs/{job_id}").json()
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    environments = client.get(f"/deployments/{deployment_id}").json()["environments"]
    production = next(e for e in environments if e["name"] == "production")
    assert (production["active_version_id"], production["status"]) == (version_id, "ACTIVE")

    # It ran in the worker process `shipway up` started, not in the API process.
    audit = client.get(f"/jobs/{job_id}/audit").json()
    claim = next(e for e in audit if e["subject_type"] == "job" and e["to_state"] == "running")
    runner_pid = owner_pid(claim["actor"])
    assert runner_pid != up.pid
    assert embedded.supervisor.owner_of(runner_pid) is up
    # Its state lives in the data dir: the SQLite database and the broker's folders.
    assert (data_dir / "shipway.db").is_file()
    assert (data_dir / "broker" / "out").is_dir()
