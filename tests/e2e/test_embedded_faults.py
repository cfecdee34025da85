"""What one machine does to ``shipway up``, for real (issue 19): a poisoned queue message, a
worker that dies, a crash while a job runs, a second instance, a rollback during a build."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.e2e.embedded_support import (
    job_of,
    promote,
    start_up,
    token_client,
    wait_for_job,
    worker_pids_of,
)
from tests.e2e.helpers import seed_ready_version
from tests.e2e.rollout_support import BASE_IMAGE, SiteImage, site_images
from tests.support.processes import executable, proc_stat, wait_until
from tests.support.variants import long_variant

pytestmark = pytest.mark.e2e
__all__ = ["site_images"]  # the fixture, imported for pytest

SLOW_BOOT = "sh -c 'sleep {seconds}; exec httpd -f -p 8080 -h /srv/www'"


def _site(client: httpx.Client, image: str, *, command: str | None = None) -> tuple[str, str]:
    deployment = client.post("/deployments", json={"name": "site", "kind": "static"})
    assert deployment.status_code == 201, deployment.text
    deployment_id = deployment.json()["id"]
    kwargs = {"command": command} if command else {}
    return deployment_id, seed_ready_version(deployment_id, image=image, **kwargs)


def test_an_unreadable_queue_message_is_quarantined_and_the_worker_goes_on(
    embedded: Stack, static_image: str
) -> None:
    """An empty message (what a full disk used to leave) and garbage are moved aside; the
    worker that read them still runs (same pid) and runs the next promote."""
    up, base_url = start_up(embedded)
    client = token_client(embedded, base_url)
    pids = worker_pids_of(up)
    broker = Path(embedded.settings["SHIPWAY_DATA_DIR"]) / "broker"
    (broker / "out" / "0000_empty.rollouts.msg").write_bytes(b"")
    (broker / "out" / "0001_garbage.builds.msg").write_bytes(b"\x00\xff not json")

    wait_until(
        lambda: len(list((broker / "quarantine").iterdir())) == 2,
        timeout=30,
        message=lambda: f"not quarantined: {sorted(os.listdir(broker / 'out'))}",
    )
    deployment_id, version_id = _site(client, static_image)
    job = wait_for_job(client, promote(client, deployment_id, version_id, "after-poison"))
    assert job["state"] == "succeeded", job
    assert worker_pids_of(up) == pids
    assert all(_alive(pid) for pid in pids)
    supervised = client.get("/queue").json()["workers_summary"]["supervised"]
    assert [w["restarts"] for w in supervised] == [0, 0]
    assert "quarantined" in up.log_path.read_text()

    # One shipway up per data directory: a second one is refused, the first goes on.
    refused = subprocess.run(
        [executable("shipway"), "up", "--port", "1"],
        env=embedded.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert f"another `shipway up` (pid {up.process.pid}) is running" in refused.stderr
    assert up.alive()


def test_a_dead_worker_is_restarted_and_readyz_says_so_meanwhile(
    embedded: Stack, static_image: str
) -> None:
    up, base_url = start_up(embedded)
    client = token_client(embedded, base_url)
    builds_pid, rollouts_pid = worker_pids_of(up)

    killed = time.monotonic()
    os.killpg(rollouts_pid, signal.SIGKILL)  # the worker and its pool child

    down = wait_until(
        lambda: (r := httpx.get(f"{base_url}/readyz")).status_code == 503 and r.json(),
        timeout=30,
        interval=0.05,
        message="readyz never reported the dead worker",
    )
    assert "rollouts: not running (signal 9" in down["error"]["details"]["checks"]["workers"]

    def restarted() -> list[dict[str, Any]] | None:
        supervised = client.get("/queue").json()["workers_summary"]["supervised"]
        rollouts = next(w for w in supervised if w["queues"] == ["rollouts"])
        return supervised if rollouts["alive"] and rollouts["restarts"] == 1 else None

    supervised = wait_until(restarted, timeout=60, interval=0.05, message="not restarted")
    print(f"\nworker SIGKILLed -> restarted: {time.monotonic() - killed:.1f} s")
    rollouts = next(w for w in supervised if w["queues"] == ["rollouts"])
    assert rollouts["pid"] != rollouts_pid and rollouts["last_exit"] == "signal 9"
    assert httpx.get(f"{base_url}/readyz").status_code == 200
    assert _alive(builds_pid)  # the other worker was left alone

    deployment_id, version_id = _site(client, static_image)
    job = wait_for_job(client, promote(client, deployment_id, version_id, "after-restart"))
    assert job["state"] == "succeeded", job


def test_jobs_of_a_killed_instance_are_taken_back_at_once_by_the_next(
    embedded: Stack, static_image: str
) -> None:
    """``shipway up`` SIGKILLed while a promote waits for slow replicas: its worker, told by
    the kernel, is still finishing the job. The next ``shipway up`` kills it and requeues
    the job at once, long before the 600 s lease would have expired."""
    env = {"SHIPWAY_LEASE_SECONDS": "600", "SHIPWAY_HEARTBEAT_SECONDS": "1"}
    first, base_url = start_up(embedded, "up-1", env=env)
    client = token_client(embedded, base_url)
    old_workers = worker_pids_of(first)
    deployment_id, version_id = _site(client, static_image, command=SLOW_BOOT.format(seconds=15))
    job_id = promote(client, deployment_id, version_id, "crash")
    wait_until(
        lambda: job_of(client, job_id)["phase"] in ("scale", "health_check"),
        timeout=60,
        interval=0.1,
        message=lambda: f"never reached the replicas: {job_of(client, job_id)}",
    )

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=10)
    restarted = time.monotonic()
    second, base_url = start_up(embedded, "up-2", env=env)
    client = token_client(embedded, base_url)

    assert not any(_alive(pid) for pid in old_workers)
    taken_back = wait_until(
        lambda: (job := job_of(client, job_id))["attempts"] >= 2 and job,
        timeout=120,  # even stretched 4x on a busy machine, less than the lease
        interval=0.2,
        message=lambda: f"job not taken back: {job_of(client, job_id)}",
    )
    assert taken_back["attempts"] == 2, taken_back
    print(f"\nrestart -> job claimed again: {time.monotonic() - restarted:.1f} s (lease 600 s)")
    audit = client.get(f"/jobs/{job_id}/audit").json()
    assert any("exited; retrying" in (event["reason"] or "") for event in audit), audit
    job = wait_for_job(client, job_id, timeout=120)
    assert job["state"] == "succeeded", job
    version = client.get(f"/versions/{version_id}").json()
    assert version["status"] == "ACTIVE"
    assert second.alive()


def _alive(pid: int) -> bool:
    try:
        state = proc_stat(pid)[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_warm_rollback_does_not_wait_behind_a_long_build(
    embedded: Stack, site_images: dict[str, SiteImage]
) -> None:
    """Builds and rollouts have a worker each: while a 60 s build holds the builds worker,
    a warm rollback runs at once. The time it takes is printed (a figure, not a check);
    ``SHIPWAY_TEST_ROLLBACK_ROUNDS`` runs that many warm rollbacks (each in a deployment of
    its own) during the build, for p50/p95/max (docs/chaos.md); with ``SHIPWAY_TEST_BUSY_BUILD=1``
    the build keeps two CPUs busy."""
    rounds = int(os.environ.get("SHIPWAY_TEST_ROLLBACK_ROUNDS", "1"))
    up, base_url = start_up(embedded, env={"SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "600"})
    client = token_client(embedded, base_url)
    builds, rollouts = worker_pids_of(up)
    priority = os.getpriority(os.PRIO_PROCESS, up.pid)
    assert os.getpriority(os.PRIO_PROCESS, rollouts) == priority
    assert os.getpriority(os.PRIO_PROCESS, builds) == min(19, priority + 10)  # CPU to rollouts
    sites = [_v2_over_v1(client, site_images, f"site-{n}") for n in range(rounds)]
    build_job = _start_slow_build(client, seconds=60)

    figures = []
    for deployment_id, url in sites:
        started = time.perf_counter()
        answer = client.post(
            f"/deployments/{deployment_id}/rollback",
            json={"environment": "production"},
            headers={"Idempotency-Key": f"rollback-during-build-{deployment_id}"},
        )
        assert answer.status_code == 202, answer.text
        wait_until(partial(_serves, url, "site-v1"), timeout=60, interval=0.005)
        figures.append((time.perf_counter() - started) * 1000)

        assert job_of(client, build_job)["state"] == "running"  # the build still runs
        rollback = wait_for_job(client, answer.json()["job"]["id"])
        assert rollback["state"] == "succeeded", rollback
        print(
            f"\nwarm rollback during a 60 s build: {figures[-1]:.0f} ms to the old version "
            f"(job created {rollback['created_at']}, started {rollback['started_at']}, "
            f"finished {rollback['finished_at']}; load {os.getloadavg()[0]:.1f})"
        )
    ordered = sorted(figures)
    print(
        f"\n{rounds} warm rollback(s) during a build: p50 {ordered[rounds // 2]:.0f} ms, "
        f"p95 {ordered[round(0.95 * (rounds - 1))]:.0f} ms, max {ordered[-1]:.0f} ms; "
        f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    client.post(f"/jobs/{build_job}/cancel")  # no need to wait out the build


def _serves(url: str, marker: str) -> bool:
    """Whether a new connection to ``url`` gets ``marker``: a cheap probe (``httpx.get``
    builds a client and its TLS context every time: 10-20 ms of CPU, more than the switch
    on a busy machine, which made the figure the probe's)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request("GET", parts.path or "/", headers={"Connection": "close"})
        return connection.getresponse().read().decode().strip() == marker
    finally:
        connection.close()


def _v2_over_v1(client: httpx.Client, images: dict[str, SiteImage], name: str) -> tuple[str, str]:
    """A deployment ``name`` serving v2, v1's replicas still running; its id and URL."""
    deployment = client.post("/deployments", json={"name": name, "kind": "static"})
    assert deployment.status_code == 201, deployment.text
    deployment_id = deployment.json()["id"]
    for image in (images["v1"].tag, images["v2"].tag):
        version_id = seed_ready_version(deployment_id, image=image)
        job = wait_for_job(client, promote(client, deployment_id, version_id, version_id))
        assert job["state"] == "succeeded", job
    url = next(
        e["public_url"]
        for e in client.get(f"/deployments/{deployment_id}").json()["environments"]
        if e["name"] == "production"
    )
    assert httpx.get(url).text.strip() == "site-v2"
    return deployment_id, url


def _start_slow_build(client: httpx.Client, *, seconds: int) -> str:
    """Publish a version whose build sleeps ``seconds``; its job's id once it builds."""
    from tests.e2e.test_builds import dockerfile_source

    # A step of its own each time: the engine's build cache would end a build it ran before
    # at once (a second run of the suite on one machine).
    step = f"echo {secrets.token_hex(8)} && sleep {seconds}"
    if os.environ.get("SHIPWAY_TEST_BUSY_BUILD"):  # two CPUs' worth of a compiler's work
        step = (
            f"sh -c 'echo {secrets.token_hex(8)}; while :; do :; done & while :; do :; done & "
            f"sleep {seconds}; kill $(jobs -p)'"
        )
    source = dockerfile_source(f'FROM {BASE_IMAGE}\nRUN {step}\nCMD ["sleep", "1"]\n')
    builder = client.post("/deployments", json={"name": "slow", "kind": "container"}).json()
    publish = client.post(
        f"/deployments/{builder['id']}/versions",
        files={"source": ("source.tar.gz", source, "application/gzip")},
        headers={"Idempotency-Key": "slow-build"},
    )
    assert publish.status_code == 202, publish.text
    build_job = str(publish.json()["job"]["id"])
    wait_until(
        lambda: job_of(client, build_job)["phase"] == "build",
        timeout=60,
        interval=0.1,
        message=lambda: f"the build never started: {job_of(client, build_job)}",
    )
    return build_job


UNIT = Path(__file__).resolve().parents[2] / "deploy" / "shipway.service"


def _unit_service_section() -> dict[str, list[str]]:
    """``[Service]`` of deploy/shipway.service: each key with its values, in order."""
    section: dict[str, list[str]] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line
        elif current == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            section.setdefault(key, []).append(value)
    return section


def _instance_processes(data_dir: Path) -> list[int]:
    """Live worker processes of the running ``shipway up`` (its workers and their pools; not
    HAProxy, which a worker may have started and which outlives shipway by design)."""
    instance = json.loads((data_dir / "up.json").read_text())["instance"]
    marker = f"SHIPWAY_UP_INSTANCE={instance}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"worker" in command and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if _alive(pid)]


@pytest.mark.parametrize("stop_timeout", ["unit", long_variant("2")])
def test_the_systemd_unit_stops_cleanly(
    embedded: Stack, static_image: str, stop_timeout: str
) -> None:
    """deploy/shipway.service stopped as systemd does (KillMode=mixed: SIGTERM to the main
    process, SIGKILL to the rest after TimeoutStopSec) while a promote runs: everything exits
    well before TimeoutStopSec. With the unit's stop timeout the job finishes; with 2 s it is
    handed back at once (queued again, not left leased) and the next start finishes it."""
    unit = _unit_service_section()
    assert unit["KillMode"] == ["mixed"] and unit["KillSignal"] == ["SIGTERM"]
    unit_env = dict(value.partition("=")[::2] for value in unit["Environment"])
    timeout_stop = float(unit["TimeoutStopSec"][0])
    assert timeout_stop > float(unit_env["SHIPWAY_UP_STOP_TIMEOUT_SECONDS"]) + 10
    assert unit["ExecStart"][0].split()[1] == "up"
    data_dir = Path(embedded.settings["SHIPWAY_DATA_DIR"])
    env = {"SHIPWAY_LEASE_SECONDS": "120", "SHIPWAY_HEARTBEAT_SECONDS": "1"}
    env["SHIPWAY_UP_STOP_TIMEOUT_SECONDS"] = (
        unit_env["SHIPWAY_UP_STOP_TIMEOUT_SECONDS"] if stop_timeout == "unit" else stop_timeout
    )
    up, base_url = start_up(embedded, env=env)
    client = token_client(embedded, base_url)
    boot = 6 if stop_timeout == "unit" else 30
    deployment_id, version_id = _site(client, static_image, command=SLOW_BOOT.format(seconds=boot))
    job_id = promote(client, deployment_id, version_id, "systemd")
    wait_until(
        lambda: job_of(client, job_id)["phase"] == "health_check",
        timeout=60,
        interval=0.1,
        message=lambda: f"never reached health_check: {job_of(client, job_id)}",
    )
    children = _instance_processes(data_dir)
    assert len(children) >= 4  # two workers and their pool children

    stopping = time.monotonic()
    os.kill(up.process.pid, signal.SIGTERM)  # KillMode=mixed: the main process only
    up.process.wait(timeout=timeout_stop)
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=10)
    print(f"\nsystemd stop ({stop_timeout}): {time.monotonic() - stopping:.1f} s")
    assert up.process.returncode in (0, -signal.SIGTERM), up.log_tail()
    assert not (data_dir / "up.json").exists()

    second, base_url = start_up(embedded, "up-2", env=env)
    client = token_client(embedded, base_url)
    job = job_of(client, job_id)
    if stop_timeout == "unit":
        assert (job["state"], job["attempts"]) == ("succeeded", 1), job  # finished while stopping
    else:
        audit = client.get(f"/jobs/{job_id}/audit").json()
        assert any("exited; retrying" in (event["reason"] or "") for event in audit), audit
        job = wait_for_job(client, job_id, timeout=120)
        assert (job["state"], job["attempts"]) == ("succeeded", 2), job
    assert second.alive()
