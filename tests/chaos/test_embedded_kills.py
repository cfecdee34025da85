"""``shipway up`` under kills (issue 19): its rollouts worker SIGKILLed in each rollout phase,
and ``shipway up`` itself SIGKILLed and started again, while traffic flows.

One deployment (2 replicas) serves through HAProxy; a thread sends a request every 20 ms
to its public URL. Each round promotes the other version, waits for a phase (scale,
health check, switch, drain) and SIGKILLs the rollouts worker's whole session, or, every
third round, ``shipway up`` itself (then starts it again on the same data directory).
Every promote must end (succeeded, or failed with a diagnosis), no request may fail, and
at the end engine, database and HAProxy agree: one ACTIVE release, no orphan replica.
``make test`` runs each fault once in tests/e2e/test_embedded_faults.py; this repeats them
under traffic (``make test-chaos``).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.chaos.support import FULL, LONG_SCENARIO
from tests.e2e.conftest import Stack, embedded
from tests.e2e.embedded_support import job_of, promote, start_up, token_client, wait_for_job
from tests.e2e.helpers import seed_ready_version
from tests.e2e.rollout_support import SiteImage, assert_consistent, site_images
from tests.support.processes import Service, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, LONG_SCENARIO]  # make test: e2e tests
__all__ = ["embedded", "site_images"]  # fixtures, imported for pytest

ROUNDS = 12 if FULL else 3
PHASES = ("scale", "health_check", "switch", "drain")
SLOW_BOOT = "sh -c 'sleep 1; exec httpd -f -p 8080 -h /srv/www'"


class Traffic(threading.Thread):
    """GET the public URL every 20 ms; counts answers by body, and failures."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="traffic")
        self.url, self.stopped = url, threading.Event()
        self.answers: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopped.wait(0.02):
                try:
                    response = client.get(self.url)
                except httpx.HTTPError as error:
                    self.failures.append(f"{time.strftime('%T')} {type(error).__name__}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{time.strftime('%T')} {response.status_code}")
                else:
                    self.answers[response.text.strip()] += 1


def test_embedded_mode_survives_worker_and_instance_kills(
    embedded: Stack, site_images: dict[str, SiteImage], chaos_report: Callable[[str], None]
) -> None:
    up, base_url = start_up(embedded)
    client = token_client(embedded, base_url)
    deployment = client.post(
        "/deployments", json={"name": "chaos", "kind": "static", "replicas": 2}
    ).json()
    deployment_id = deployment["id"]
    versions = [
        seed_ready_version(deployment_id, image=site_images[name].tag, command=SLOW_BOOT)
        for name in ("v1", "v2")
    ]
    first = promote(client, deployment_id, versions[0], "start")
    assert wait_for_job(client, first)["state"] == "succeeded"
    url = next(
        e["public_url"]
        for e in client.get(f"/deployments/{deployment_id}").json()["environments"]
        if e["name"] == "production"
    )
    traffic = Traffic(url)
    traffic.start()
    outcomes: collections.Counter[str] = collections.Counter()
    kills: collections.Counter[str] = collections.Counter()
    try:
        for round_ in range(ROUNDS):
            job_id = promote(client, deployment_id, versions[(round_ + 1) % 2], f"r{round_}")
            phase = PHASES[round_ % len(PHASES)]
            if not _reached(client, job_id, phase):
                kills["missed"] += 1
            elif round_ % 3 == 2:
                up, base_url, client = _kill_and_restart(embedded, up)
                kills[f"up in {phase}"] += 1
            else:
                _kill_rollouts_worker(client)
                kills[f"worker in {phase}"] += 1
            job = wait_for_job(client, job_id)
            outcomes[f"{job['state']} {job['failure_reason'] or ''}".strip()] += 1
    finally:
        traffic.stopped.set()
        traffic.join(15)

    chaos_report(
        f"chaos embedded kills: {ROUNDS} promotes, kills {dict(kills)}, outcomes "
        f"{dict(outcomes)}, requests {sum(traffic.answers.values())} ok "
        f"{dict(traffic.answers)}, failed {len(traffic.failures)}"
    )
    assert not traffic.failures, traffic.failures[:20]
    assert sum(outcomes.values()) == ROUNDS
    wait_until(lambda: _quiet(client), timeout=60, message="jobs still running")
    assert_consistent(deployment_id)


def _reached(client: httpx.Client, job_id: str, phase: str) -> bool:
    """Whether the job got to ``phase`` (False if it ended first)."""

    def probe() -> str | None:
        job = job_of(client, job_id)
        if job["state"] == "running" and job["phase"] == phase:
            return "reached"
        return "ended" if job["state"] in ("succeeded", "failed") else None

    outcome = wait_until(
        probe,
        timeout=90,
        interval=0.02,
        message=lambda: f"{job_id} never reached {phase}: {job_of(client, job_id)}",
    )
    return outcome == "reached"


def _kill_rollouts_worker(client: httpx.Client) -> None:
    supervised = client.get("/queue").json()["workers_summary"]["supervised"]
    rollouts = next(w for w in supervised if w["queues"] == ["rollouts"])
    os.killpg(rollouts["pid"], signal.SIGKILL)  # the worker and its pool child


def _kill_and_restart(embedded: Stack, up: Service) -> tuple[Service, str, httpx.Client]:
    os.kill(up.process.pid, signal.SIGKILL)
    up.process.wait(timeout=10)
    service, base_url = start_up(embedded, f"up-{time.monotonic_ns()}")
    return service, base_url, token_client(embedded, base_url)


def _quiet(client: httpx.Client) -> bool:
    running = client.get("/queue").json()["running"]
    return not running
