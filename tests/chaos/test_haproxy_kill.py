"""HAProxy SIGKILLed under steady traffic while a rollout runs.

Two 2-replica deployments serve through HAProxy; a thread per deployment sends a
request every 20 ms to its public URL. A promote of a new version starts on the
first deployment, and while it runs the test SIGKILLs HAProxy's whole process
tree (master and workers). The relay's router watch (or the rollout itself,
whichever touches the router first) starts HAProxy again from its saved state
and rebuilds every route's servers from the database and the engine's labelled
containers.

Requests may fail while HAProxy is down; once a deployment answered again, not
one of its requests may fail. At the end the rollout has ended (succeeded, or
failed cleanly with the previous release serving), and containers, database and
HAProxy servers agree exactly for both deployments.
"""

from __future__ import annotations

import collections
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipway.router.current import router_config
from tests.chaos.support import FULL, SCALE, wait_all_terminal
from tests.chaos.test_kill_storm import configure
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, wait_for_job
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    create_deployment,
    public_url,
    site_version,
)
from tests.support.processes import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(600 if FULL else 300)]

SLOW_BOOT = "sh -c 'sleep 2; exec httpd -f -p 8080 -h /srv/www'"


class Probe(threading.Thread):
    """GET ``url`` every 20 ms; remembers (sent, answered, outcome) of each request.

    Both ends count: a request sent just before a kill may still be answered 200 a
    moment after it, and must not pass for the proxy being back.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name=f"probe-{url}")
        self.url = url
        self.outcomes: list[tuple[float, float, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stopped.wait(0.02):
                sent = time.monotonic()
                try:
                    response = client.get(self.url)
                    outcome = str(response.status_code)
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                self.outcomes.append((sent, time.monotonic(), outcome))

    def failures(self, *, sent_after: float, answered_before: float = float("inf")) -> list[str]:
        """Failed requests sent after ``sent_after`` and answered before ``answered_before``."""
        return [
            outcome
            for sent, answered, outcome in self.outcomes
            if sent >= sent_after and answered < answered_before and outcome != "200"
        ]

    def first_ok(self, *, sent_after: float) -> float | None:
        """When the first request sent after ``sent_after`` was sent that got a 200."""
        return next(
            (sent for sent, _, o in self.outcomes if sent > sent_after and o == "200"), None
        )


def haproxy_pid(router_dir: Path) -> int | None:
    try:
        return int((router_dir / "haproxy.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def test_killed_haproxy_is_restarted_and_rebuilt_from_the_database_under_traffic(
    stack: Stack,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    chaos_report: Any,
) -> None:
    configure(stack, monkeypatch, {"SHIPWAY_MONITOR_INTERVAL_SECONDS": "0"})
    router_dir = Path(stack.settings["SHIPWAY_ROUTER_DIR"])
    stack.wait_ready(stack.start_relay(wait=False), stack.start_worker("w1", wait=False))
    api = stack.start_api()
    token = api_token()
    headers = {"Authorization": f"Bearer {token}"}
    client = api.client(token)
    sites = []
    for _ in range(2):
        deployment = create_deployment(client, headers, replicas=2)
        versions = [
            site_version(deployment["id"], site_images[name], command=SLOW_BOOT)
            for name in ("v1", "v2", "v3")
        ]
        sites.append((deployment, versions))
    for deployment, versions in sites:
        assert wait_for_job(_promote(client, deployment, versions[0]), timeout=120).state == (
            "succeeded"
        )
    probes = [Probe(public_url(client, d)) for d, _ in sites]
    for probe in probes:
        probe.start()
    time.sleep(1)

    kills: list[dict[str, float]] = []
    rollouts = []
    for number in range(SCALE.haproxy_kills):
        deployment, versions = sites[0]
        rollout = _promote(client, deployment, versions[1 + number % 2])
        rollouts.append(rollout)

        def booting(job_id: str = rollout) -> bool:
            return _phase(job_id) == "health_check"

        wait_until(booting, timeout=60, interval=0.05)  # kill while the new replicas boot

        pid = haproxy_pid(router_dir)
        assert pid is not None and router_config().is_running()
        killed_at = time.monotonic()
        os.killpg(pid, signal.SIGKILL)  # master and workers

        def restarted(old: int = pid) -> bool:
            return router_config().is_running() and haproxy_pid(router_dir) != old

        wait_until(
            restarted,
            timeout=30,
            interval=0.05,
            message="HAProxy was not restarted",
        )
        restarted_at = time.monotonic()
        for probe in probes:

            def answered(p: Probe = probe, t: float = restarted_at) -> float | None:
                return p.first_ok(sent_after=t)

            wait_until(
                answered,
                timeout=30,
                message=f"{probe.url} never answered again",
            )
        back = max(p.first_ok(sent_after=killed_at) or 0 for p in probes)
        kills.append(
            {"restart": restarted_at - killed_at, "traffic_back": back - killed_at, "at": killed_at}
        )
        wait_for_job(rollout, timeout=120)

    wait_all_terminal(timeout=120)
    time.sleep(1)
    for probe in probes:
        probe.stopped.set()
        probe.join(10)

    # After each recovery and until the next kill (or the end), not one failed request.
    outages: collections.Counter[str] = collections.Counter()
    for index, kill in enumerate(kills):
        until = kills[index + 1]["at"] if index + 1 < len(kills) else float("inf")
        for probe in probes:
            back_at = probe.first_ok(sent_after=kill["at"])
            assert back_at is not None
            outages.update(
                o
                for sent, answered, o in probe.outcomes
                if answered >= kill["at"] and sent < back_at and o != "200"
            )
            after = probe.failures(sent_after=back_at, answered_before=until)
            assert after == [], (probe.url, f"kill {index + 1}", collections.Counter(after))
    states = collections.Counter(wait_for_job(r).state for r in rollouts)
    for deployment, _ in sites:
        assert_consistent(deployment["id"])
    served = sum(1 for p in probes for _, _, o in p.outcomes if o == "200")
    chaos_report(
        f"chaos haproxy kill: {len(kills)} kill(s) during rollouts (rollouts {dict(states)}); "
        "restarted after "
        + ", ".join(f"{k['restart']:.1f}s" for k in kills)
        + "; traffic back after "
        + ", ".join(f"{k['traffic_back']:.1f}s" for k in kills)
        + f"; requests: {served} ok, failed while down {dict(outages)}, failed after recovery 0"
    )


def _promote(client: httpx.Client, deployment: dict[str, Any], version_id: str) -> str:
    response = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        json={"environment": "production"},
        headers={"Idempotency-Key": secrets.token_hex(8)},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job"]["id"])


def _phase(job_id: str) -> str | None:
    from tests.e2e.helpers import get_job

    return get_job(job_id).phase
