"""Embedded mode: ``shipway up`` alone (SQLite, filesystem transport, a worker per queue)
runs a promote, and stops with every child on a signal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.embedded_support import start_up, token_client, worker_pids_of
from tests.e2e.helpers import owner_pid, seed_ready_version
from tests.support.processes import proc_stat, proc_stats, wait_until
from tests.support.variants import long_variant

pytestmark = pytest.mark.e2e


def test_shipway_up_promotes_a_version_to_active(embedded: Stack, static_image: str) -> None:
    data_dir = Path(embedded.settings["SHIPWAY_DATA_DIR"])
    up, base_url = start_up(embedded)
    client = token_client(embedded, base_url)

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
    assert up.pid in _ancestors(runner_pid)  # a pool child of the worker `up` started
    # Its state lives in the data dir: the SQLite database and the broker's folders.
    assert (data_dir / "shipway.db").is_file()
    assert (data_dir / "broker" / "out").is_dir()


def _ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of ``pid`` (from /proc)."""
    found = []
    while pid > 1:
        pid = int(proc_stat(pid)[1])
        found.append(pid)
    return found


def _session_members(session_id: int) -> list[int]:
    """Live (not zombie) processes of a session: the worker and its pool children."""
    return [
        pid
        for pid, fields in proc_stats()
        if int(fields[3]) == session_id and fields[0] not in ("Z", "X")
    ]


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGTERM, False),
        long_variant(signal.SIGINT, False),
        long_variant(signal.SIGHUP, False),
        (signal.SIGKILL, False),
        (signal.SIGTERM, True),
    ],
)
def test_a_signal_to_shipway_up_stops_every_child(
    embedded: Stack, signum: int, to_group: bool
) -> None:
    """SIGTERM, SIGINT and SIGHUP to the pid (or the process group) of ``shipway up`` stop it
    and its workers (with their pool children) within the stop timeout; after a SIGKILL,
    which it cannot handle, the workers still stop: the kernel tells them their parent died."""
    up, _ = start_up(embedded, f"up-{signum}", env={"SHIPWAY_UP_STOP_TIMEOUT_SECONDS": "20"})
    worker_pids = worker_pids_of(up)
    wait_until(
        lambda: all(len(_session_members(pid)) >= 2 for pid in worker_pids),
        timeout=60,
        message="a worker without its pool child",
    )

    if to_group:
        os.killpg(up.process.pid, signum)  # what a terminal's Ctrl-C or systemd sends
    else:
        os.kill(up.process.pid, signum)

    up.process.wait(timeout=30)  # well within 20 s of stop timeout plus the API's own stop
    wait_until(
        lambda: not any(_session_members(pid) for pid in worker_pids),
        timeout=30,
        message=lambda: f"worker sessions left: {[_session_members(p) for p in worker_pids]}",
    )
    if signum != signal.SIGKILL:
        assert up.process.returncode in (0, -signum, 128 + signum), up.process.returncode
