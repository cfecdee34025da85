"""Start ``shipway up`` for a test and talk to it (tests/e2e/test_embedded*.py)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

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
