"""Zero downtime: steady traffic through the public URL while versions change under it.

Background threads send GET requests (bounded: at most 2,000 requests or 60 s in
all, to 127.0.0.1 only) — two threads alternating one keep-alive connection and
fresh connections, one thread with slow requests (1 s, in flight while a release
drains) — while v1 → v2 → v3 are promoted and the environment is rolled back to v2 —
cold (replaced replicas removed at once) and warm (replicas kept for the
scale-down delay, so the rollback is a router switch). Not one request may fail
(connection error or 5xx), every body must come from a promoted version, and a
request sent after a rollout finished must be answered by the new version.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shipway.config import get_settings
from tests.conftest import TokenFactory
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    create_deployment,
    fetch,
    promote,
    public_url,
    rollback,
    run,
    site_images,
    site_version,
)

pytestmark = pytest.mark.e2e
__all__ = ["site_images"]  # the fixture, imported for pytest

MAX_REQUESTS = 2000
MAX_SECONDS = 60.0


@dataclass
class Traffic:
    """Requests sent by the background threads: (sent_at, outcome) per request."""

    url: str
    results: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> list[threading.Thread]:
        """Two fast senders and one slow one."""
        assert self.url.startswith("http://127.0.0.1:")
        threads = [
            threading.Thread(target=self.send, args=("/",), daemon=True),
            threading.Thread(target=self.send, args=("/",), daemon=True),
            threading.Thread(target=self.send, args=("/cgi-bin/slow?1",), daemon=True),
        ]
        for thread in threads:
            thread.start()
        return threads

    def done(self) -> bool:
        return (
            self.stop.is_set()
            or len(self.results) >= MAX_REQUESTS
            or time.monotonic() - self.started > MAX_SECONDS
        )

    def send(self, path: str) -> None:
        with httpx.Client(timeout=10.0) as keep_alive:
            count = 0
            while not self.done():
                count += 1
                sent = time.monotonic()
                try:
                    response = (
                        httpx.get(self.url + path, timeout=10.0)
                        if count % 2
                        else keep_alive.get(self.url + path)
                    )
                    outcome = (
                        response.text.strip().removesuffix(" slow")
                        if response.status_code == 200
                        else f"HTTP {response.status_code}: {response.text[:100]!r}"
                    )
                except httpx.HTTPError as error:
                    outcome = f"{type(error).__name__}: {error}"
                with self.lock:
                    self.results.append((sent, outcome))
                time.sleep(0.005)


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_no_request_fails_while_promoting_and_rolling_back(
    client: TestClient,
    make_token: TokenFactory,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    if mode == "warm":
        monkeypatch.setenv("SHIPWAY_SCALE_DOWN_DELAY_SECONDS", "300")
        get_settings.cache_clear()
    app = create_deployment(client, make_token("deployments:write"), replicas=2)
    v1, v2, v3 = (site_version(app["id"], site_images[n]) for n in ("v1", "v2", "v3"))
    _complete(promote(client, app, v1))
    url = public_url(client, app)
    assert fetch(url) == "site-v1"

    traffic = Traffic(url)
    senders = traffic.start()
    switched: list[tuple[float, str]] = []  # (finished_at, version now serving)
    try:
        _wait_for_requests(traffic, 20)
        for version_id, marker in ((v2, "site-v2"), (v3, "site-v3")):
            _complete(promote(client, app, version_id))
            switched.append((time.monotonic(), marker))
            _wait_for_requests(traffic, len(traffic.results) + 20)
        response = rollback(client, app)
        assert response.status_code == 202, response.text
        assert response.json()["release"]["version_id"] == v2
        _complete(response.json())
        switched.append((time.monotonic(), "site-v2"))
        _wait_for_requests(traffic, len(traffic.results) + 20)
    finally:
        traffic.stop.set()
        for sender in senders:
            sender.join(30)
    results = list(traffic.results)
    failures = [(round(t, 3), outcome) for t, outcome in results if not outcome.startswith("site-")]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:10]}"
    assert {outcome for _, outcome in results} <= {"site-v1", "site-v2", "site-v3"}
    for finished_at, marker in switched:
        late = {outcome for at, outcome in results if at > finished_at}
        following = [m for t, m in switched if t > finished_at]
        allowed = {marker, *following}
        assert late <= allowed, (marker, late)
    assert len(results) >= 80
    print(f"{len(results)} requests, none failed")
    assert_consistent(app["id"])


def _complete(body: dict[str, Any]) -> None:
    assert run(body["job"]["id"]) == "succeeded"


def _wait_for_requests(traffic: Traffic, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(traffic.results) < min(count, MAX_REQUESTS) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_request_in_flight_survives_a_router_reload_during_the_drain(
    client: TestClient, make_token: TokenFactory, site_images: dict[str, SiteImage]
) -> None:
    """HAProxy reloads while v1 drains a slow request (as another environment's first rollout
    does when the router's spare routes have run out).

    The reloaded HAProxy's counters start at zero, but the old HAProxy worker still
    carries the request to v1: v1 must not be stopped under it.
    """
    from shipway.router.current import get_router
    from shipway.router.haproxy import HAProxyRouter

    app = create_deployment(client, make_token("deployments:write"), replicas=1)
    v1, v2 = (site_version(app["id"], site_images[n]) for n in ("v1", "v2"))
    _complete(promote(client, app, v1))
    url = public_url(client, app)
    outcome: list[str] = []

    def slow() -> None:
        try:
            response = httpx.get(url + "/cgi-bin/slow?4", timeout=30)
            outcome.append(f"{response.status_code} {response.text.strip()}")
        except httpx.HTTPError as error:
            outcome.append(f"{type(error).__name__}: {error}")

    request = threading.Thread(target=slow)
    request.start()
    key = f"{app['id']}--production"
    deadline = time.monotonic() + 10
    while not any(get_router().open_sessions(key).values()):  # it reached v1 (4 s there)
        assert time.monotonic() < deadline, "the slow request never reached v1"
        time.sleep(0.02)
    body = promote(client, app, v2)
    states: list[str | None] = []
    rollout = threading.Thread(target=lambda: states.append(run(body["job"]["id"])))
    rollout.start()
    deadline = time.monotonic() + 30
    while _phase(body["job"]["id"]) != "drain" and time.monotonic() < deadline:
        time.sleep(0.02)
    router = get_router()
    assert isinstance(router, HAProxyRouter)
    reloads = router.process.master.status().reloads
    router.reload()
    assert router.process.master.status().reloads == reloads + 1
    rollout.join(60)
    request.join(30)
    assert states == ["succeeded"]
    assert outcome == ["200 site-v1 slow"]
    assert fetch(url) == "site-v2"


def _phase(job_id: str) -> str | None:
    from tests.e2e.rollout_support import job

    return job(job_id).phase
