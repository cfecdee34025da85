"""The Docker engine restarted while a rollout runs.

Restarting dockerd stops every container on the machine (replicas run with
restart policy "no" and the engine has no live-restore), including those of
anything else using this engine at the time. So this test runs only in the full
chaos run and only when asked: ``SHIPWAY_CHAOS_SCALE=full SHIPWAY_CHAOS_DOCKER=1``
(``make test-chaos`` sets both).

A 2-replica deployment serves v1 under steady traffic; a promote of v2 (slow to
boot) is in its health check when the engine is stopped (SIGTERM to dockerd, as
``systemctl restart`` would) and started again with the command line it had.

Afterwards, with no manual step: the rollout ended (it failed cleanly, or
resumed and succeeded); the release the database calls ACTIVE serves again —
the relay starts the stopped replicas of serving releases again and rebuilds
HAProxy's servers with their new ports; containers, database and HAProxy agree;
and once traffic came back, no request failed.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.support import FULL, wait_all_terminal
from tests.chaos.test_haproxy_kill import Probe, _phase, _promote
from tests.chaos.test_kill_storm import configure
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, wait_for_job
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    create_deployment,
    deployment_containers,
    public_url,
    releases,
    site_version,
)
from tests.support.processes import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(600)]

RESTARTS_DOCKER = pytest.mark.skipif(
    not (FULL and os.environ.get("SHIPWAY_CHAOS_DOCKER") == "1"),
    reason="restarts the shared Docker engine: only with SHIPWAY_CHAOS_SCALE=full "
    "and SHIPWAY_CHAOS_DOCKER=1 (make test-chaos)",
)

SLOW_BOOT = "sh -c 'sleep 3; exec httpd -f -p 8080 -h /srv/www'"
DOCKERD_LOG = Path(__file__).resolve().parents[2] / ".scratch" / "dockerd.log"


def docker_ok() -> bool:
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return done.returncode == 0


def restart_dockerd() -> float:
    """Stop dockerd (SIGTERM) and start it again as it was started; returns the seconds down."""
    found = subprocess.run(["pgrep", "-xo", "dockerd"], capture_output=True, text=True, check=False)
    assert found.returncode == 0, "no dockerd process to restart"
    pid = int(found.stdout.split()[0])
    args = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    command = [a.decode() for a in args]
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=90, interval=0.1)
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(  # the way scripts/provision.sh starts it: its own session
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    wait_until(docker_ok, timeout=120, interval=0.5, message="dockerd did not come back")
    return time.monotonic() - started


@pytest.mark.chaos_docker
@RESTARTS_DOCKER
def test_docker_engine_restart_during_a_rollout_fails_cleanly_or_resumes(
    stack: Stack,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    chaos_report: Any,
) -> None:
    configure(stack, monkeypatch, {"SHIPWAY_LEASE_SECONDS": "5"})
    stack.wait_ready(stack.start_relay(wait=False), stack.start_worker("w1", wait=False))
    api = stack.start_api()
    token = api_token()
    client = api.client(token)
    deployment = create_deployment(
        client, {"Authorization": f"Bearer {token}"}, replicas=2, health={"deadline_seconds": 60}
    )
    v1 = site_version(deployment["id"], site_images["v1"])
    v2 = site_version(deployment["id"], site_images["v2"], command=SLOW_BOOT)
    markers = {v1: site_images["v1"].marker, v2: site_images["v2"].marker}
    assert wait_for_job(_promote(client, deployment, v1), timeout=120).state == "succeeded"
    probe = Probe(public_url(client, deployment))
    probe.start()
    time.sleep(1)

    rollout = _promote(client, deployment, v2)
    wait_until(lambda: _phase(rollout) == "health_check", timeout=60, interval=0.05)
    stopped_at = time.monotonic()
    down_seconds = restart_dockerd()

    job = wait_for_job(rollout, timeout=240)
    assert job.state in ("succeeded", "failed"), job.state
    wait_all_terminal(timeout=120)

    def serving() -> str | None:
        rows = [r for r in releases(deployment["id"]) if r.environment == "production"]
        active = [r for r in rows if r.status == "ACTIVE"]
        if len(active) != 1:
            return None
        try:
            assert_consistent(deployment["id"])
        except AssertionError:
            return None
        return markers[active[0].version_id]

    marker = wait_until(serving, timeout=120, interval=1, message="never consistent again")
    recovered_at = time.monotonic()
    time.sleep(3)
    probe.stopped.set()
    probe.join(10)
    # Requests fail while the engine is down; once shipway restored a consistent state, none.
    late = probe.failures(sent_after=recovered_at + 0.5)
    assert late == [], collections.Counter(late)
    assert probe.outcomes[-1][2] == "200"
    failed = [at for _, at, outcome in probe.outcomes if at > stopped_at and outcome != "200"]
    window = f"{failed[0] - stopped_at:.1f}s-{failed[-1] - stopped_at:.1f}s" if failed else "none"
    if job.state == "failed":
        assert marker == markers[v1], "a failed rollout must leave v1 serving"
    chaos_report(
        f"chaos docker restart: engine down {down_seconds:.1f}s during the health check; "
        f"rollout {job.state} (attempts {job.attempts}, {job.failure_reason or 'no failure'}); "
        f"{marker} serves, consistent {recovered_at - stopped_at:.1f}s after the stop; failed "
        f"requests {dict(collections.Counter(probe.failures(sent_after=stopped_at)))} in {window}"
    )


def test_replicas_stopped_behind_shipways_back_are_started_again_and_routed(
    stack: Stack,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    chaos_report: Any,
) -> None:
    """What an engine restart does to one deployment, without touching the shared engine:
    every replica of the ACTIVE release stopped at once (``docker stop``)."""
    configure(stack, monkeypatch, {"SHIPWAY_MONITOR_INTERVAL_SECONDS": "0"})
    stack.wait_ready(stack.start_relay(wait=False), stack.start_worker("w1", wait=False))
    api = stack.start_api()
    token = api_token()
    client = api.client(token)
    deployment = create_deployment(client, {"Authorization": f"Bearer {token}"}, replicas=2)
    v1 = site_version(deployment["id"], site_images["v1"])
    one = _promote(client, deployment, v1)
    assert wait_for_job(one, timeout=120).state == "succeeded"
    probe = Probe(public_url(client, deployment))
    probe.start()
    time.sleep(1)
    before = {c.name: c.host_port for c in deployment_containers(deployment["id"])}

    stopped_at = time.monotonic()
    subprocess.run(["docker", "stop", "-t", "0", *before], check=True, capture_output=True)

    def restored() -> dict[str, int | None] | None:
        now = {c.name: c.host_port for c in deployment_containers(deployment["id"]) if c.running}
        if set(now) != set(before):
            return None
        try:
            assert_consistent(deployment["id"])
        except AssertionError:
            return None
        return now

    after = wait_until(restored, timeout=60, interval=0.2, message="replicas never restored")
    recovered_at = time.monotonic()
    time.sleep(2)
    probe.stopped.set()
    probe.join(10)
    late = probe.failures(sent_after=recovered_at + 0.5)
    assert late == [], collections.Counter(late)
    assert probe.outcomes[-1][2] == "200"
    chaos_report(
        f"chaos replicas stopped: {len(before)} replicas of the ACTIVE release stopped; "
        f"started again and routed after {recovered_at - stopped_at:.1f}s "
        f"(ports {sorted(before.values(), key=port_order)} -> "
        f"{sorted(after.values(), key=port_order)}); failed requests "
        f"meanwhile {dict(collections.Counter(probe.failures(sent_after=stopped_at)))}"
    )


def port_order(port: int | None) -> int:
    """Sort key for host ports (a container not running has none)."""
    return port or 0
