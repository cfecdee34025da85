"""Start ``shipway up`` for a test and talk to it (tests/e2e/test_embedded*.py)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.conftest import Stack, wait_for_api
from tests.support.processes import Service, executable, wait_until
from tests.support.services import free_port


@dataclass
class Up:
    """A running ``shipway up``: its process, its URL and a client with a token."""

    service: Service
    base_url: str
    client: httpx.Client


def start_up(
    stack: Stack, name: str = "up", *, env: Mapping[str, str] | None = None, port: int = 0
) -> tuple[Service, str]:
    """Start ``shipway up`` on a free port (or ``port``); returns it once its API answers."""
    port = port or free_port()
    service = stack.supervisor.spawn(
        name,
        [executable("shipway"), "up", "--host", "127.0.0.1", "--port", str(port)],
        env={**stack.env, **(env or {})},
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_for_api(service, base_url, timeout=60)
    return service, base_url


def token_client(stack: Stack, base_url: str, scope: str = "deployments:write") -> httpx.Client:
    """A client of ``base_url``'s API with a new token of workspace ``acme``."""
    command = ["tokens", "create", "--workspace", "acme", "--scope", scope, "--json"]
    created = subprocess.run(
        [executable("shipway"), *command],
        env=stack.env,
        cwd=stack.supervisor.log_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = json.loads(created.stdout)["token"]
    return httpx.Client(
        base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def worker_pids_of(up: Service) -> list[int]:
    """The worker pids ``shipway up`` printed when it started (one per queue group)."""
    found = wait_until(
        lambda: re.search(r"worker pids ([\d ]+)", up.log_path.read_text()), timeout=30
    )
    return [int(pid) for pid in found.group(1).split()]


def promote(client: httpx.Client, deployment_id: str, version_id: str, key: str) -> str:
    """``POST …/promote`` to production (must be accepted); the job's id."""
    answer = client.post(
        f"/deployments/{deployment_id}/versions/{version_id}/promote",
        json={"environment": "production"},
        headers={"Idempotency-Key": key},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job"]["id"])


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """``GET /jobs/{id}``."""
    body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    return body


def wait_for_job(client: httpx.Client, job_id: str, *, timeout: float = 90) -> dict[str, Any]:
    """The job once it ended (succeeded or failed)."""

    def ended() -> dict[str, Any] | None:
        job = job_of(client, job_id)
        return job if job["state"] in ("succeeded", "failed") else None

    return wait_until(
        ended,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"job {job_id} not finished: {job_of(client, job_id)}",
    )
