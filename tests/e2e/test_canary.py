"""Canary promotions on the real engine and HAProxy, with local traffic (127.0.0.1 only).

The API runs in-process (TestClient); each rollout job runs in a thread of this
process (``run_job``) while a bounded traffic generator sends requests to the
environment's public HAProxy address and records which version answered. The
analysis reads HAProxy's own per-server counters, as in production.

- a healthy canary walks every step, the traffic share observed by the client at
  each step is within a tolerance of the step weight, and it ends ACTIVE;
- a canary answering 500 aborts at the analysis that reaches the failure limit;
  the stable version answers every request, before and after;
- a canary with too little traffic never passes (inconclusive), then aborts;
- pause holds past the step's pause, resume goes on, promote-now skips the
  remaining steps, abort removes the canary: all audited with the actor.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shipway.db import session_factory
from shipway.events.models import Event
from tests.conftest import TokenFactory
from tests.e2e.rollout_support import (
    BASE_IMAGE,
    SiteImage,
    assert_consistent,
    auth,
    build_image,
    containers,
    create_deployment,
    job,
    public_url,
    release,
    remove_image,
    run,
    site_version,
)
from tests.support.processes import wait_until

# PostgreSQL only: the job thread and the test poll the database at the same time.
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]

PAGE = "/cgi-bin/page"


def build_canary_image(marker: str, *, page_status: int) -> SiteImage:
    """``/`` answers ``marker``; ``/cgi-bin/page`` answers ``page_status`` with ``marker``."""
    context = Path(tempfile.mkdtemp(prefix="sw-canary-"))
    try:
        www = context / "www"
        (www / "cgi-bin").mkdir(parents=True)
        (www / "index.html").write_text(f"{marker}\n")
        (www / "healthz").write_text("ok\n")
        page = www / "cgi-bin" / "page"
        reason = "OK" if page_status == 200 else "Internal Server Error"
        page.write_text(
            f"#!/bin/sh\nprintf 'Status: {page_status} {reason}\\r\\n"
            f"Content-Type: text/plain\\r\\n\\r\\n{marker}\\n'\n"
        )
        page.chmod(0o755)
        (context / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY www/ /srv/www/\nEXPOSE 8080\n"
            'CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]\n'
        )
        tag = f"shipway-test/canary-{marker}:{secrets.token_hex(3)}"
        return build_image(context, tag=tag, marker=marker)
    finally:
        shutil.rmtree(context, ignore_errors=True)


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, SiteImage]]:
    """stable (v1), good canary (v2), another good one (v3), faulty canary (bad: page → 500)."""
    built = {
        "v1": build_canary_image("canary-v1", page_status=200),
        "v2": build_canary_image("canary-v2", page_status=200),
        "v3": build_canary_image("canary-v3", page_status=200),
        "bad": build_canary_image("canary-bad", page_status=500),
    }
    yield built
    for image in built.values():
        remove_image(image.tag)


# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """A bounded request loop against one local address; each answer is labelled."""

    url: str
    paths: list[str]
    delay: float = 0.004
    limit: int = 20_000
    label: Any = None
    answers: list[tuple[Any, int, str]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        assert self.url.startswith("http://127.0.0.1:"), self.url
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Traffic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            i = 0
            while not self.stopped.is_set() and len(self.answers) < self.limit:
                label = self.label
                path = self.paths[i % len(self.paths)]
                i += 1
                try:
                    response = client.get(self.url + path)
                    self.answers.append((label, response.status_code, response.text.strip()))
                except httpx.HTTPError as error:
                    self.answers.append((label, 0, type(error).__name__))
                time.sleep(self.delay)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def app(client: TestClient, make_token: TokenFactory) -> dict[str, Any]:
    return create_deployment(client, make_token("deployments:write"), replicas=1)


def serve(client: TestClient, app: dict[str, Any], image: SiteImage) -> tuple[str, str]:
    """Promote ``image`` all at once; returns (release id, public url)."""
    version_id = site_version(app["id"], image)
    body = promote_with(client, app, version_id, None)
    assert run(body["job"]["id"]) == "succeeded"
    return body["release"]["id"], public_url(client, app)


def promote_with(
    client: TestClient, app: dict[str, Any], version_id: str, strategy: dict[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"environment": "production"}
    if strategy is not None:
        body["strategy"] = strategy
    response = client.post(
        f"/api/v1/deployments/{app['id']}/versions/{version_id}/promote",
        json=body,
        headers=auth(app, secrets.token_hex(8)),
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def canary(*weights: int, pause: float, **analysis: Any) -> dict[str, Any]:
    rules = {"interval_seconds": 0.5, "min_requests": 10, "max_error_rate": 0.01, **analysis}
    steps = [{"weight": w, "pause_seconds": pause} for w in weights]
    return {"type": "canary", "steps": steps, "analysis": rules}


class Background:
    """A rollout job running in a thread of this process."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.state: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.state = run(self.job_id)

    def wait(self, timeout: float = 90.0) -> str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"job {self.job_id} still running"
        return self.state


def canary_state(release_id: str) -> dict[str, Any]:
    return dict((release(release_id).rollout or {}).get("canary") or {})


def wait_canary(release_id: str, timeout: float = 60.0, **expected: Any) -> dict[str, Any]:
    """Wait until the release's canary dict has the ``expected`` values."""
    wait_until(
        lambda: all(canary_state(release_id).get(k) == v for k, v in expected.items()),
        timeout=timeout,
        message=f"canary {expected}",
    )
    return canary_state(release_id)


def canary_events(job_id: str) -> list[Event]:
    with session_factory()() as session:
        rows = list(
            session.scalars(
                select(Event)
                .where(Event.job_id == job_id, Event.subject_type == "canary")
                .order_by(Event.id)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def follow_steps(release_id: str, traffic: Traffic, done: threading.Event) -> None:
    """Label traffic with the current step index (None while not at a step)."""
    while not done.is_set():
        state = canary_state(release_id)
        running = state.get("state") == "analysing"
        traffic.label = state.get("step_index") if running else None
        time.sleep(0.05)


# --------------------------------------------------------------------------- tests


def test_healthy_canary_walks_every_step_with_the_weighted_share(
    client: TestClient, make_token: TokenFactory, images: dict[str, SiteImage]
) -> None:
    app = create_deployment(client, make_token("deployments:write"), replicas=2)
    stable_id, url = serve(client, app, images["v1"])
    traffic = Traffic(url, ["/", PAGE]).start()
    try:
        v2 = site_version(app["id"], images["v2"])
        # Analyses every second: 10 canary requests a window at 20 % need ~50 requests/s,
        # which the traffic loop keeps up on a busy machine (every 0.5 s needed ~100/s, and
        # at load 6 every analysis was inconclusive: the canary never left step 0).
        strategy = canary(20, 50, pause=4.0, interval_seconds=1.0)
        body = promote_with(client, app, v2, strategy)
        canary_id, job_id = body["release"]["id"], body["job"]["id"]
        done = threading.Event()
        watcher = threading.Thread(target=follow_steps, args=(canary_id, traffic, done))
        watcher.start()
        rollout = Background(job_id)
        # during the canary: two ACTIVE/DEPLOYING releases, the stable one untouched
        seen = wait_canary(canary_id, step_index=1, state="analysing")
        assert release(stable_id).status == "ACTIVE" and release(canary_id).status == "DEPLOYING"
        assert seen["step_count"] == 2 and seen["weight"] == 50
        api_job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(app)).json()
        assert api_job["progress"]["canary"]["step_count"] == 2
        assert rollout.wait() == "succeeded"
        done.set()
        watcher.join()
        time.sleep(0.5)
    finally:
        traffic.stop()

    final = release(canary_id)
    assert final.status == "ACTIVE" and release(stable_id).status == "RETIRED"
    state = final.rollout["canary"]
    assert state["state"] == "completed" and state["weight"] == 100
    assert {a["verdict"] for a in state["analyses"]} <= {"pass", "inconclusive"}
    assert {a["step_index"] for a in state["analyses"] if a["verdict"] == "pass"} == {0, 1}
    assert all(status == 200 for _, status, _ in traffic.answers), Counter(
        (s, b) for _, s, b in traffic.answers if s != 200
    )
    shares = observed_shares(traffic.answers, canary_marker="canary-v2")
    print("observed canary share per step:", shares)
    for step, weight in ((0, 20), (1, 50)):
        count, share = shares[step]
        assert count >= 100, shares
        assert abs(share - weight / 100) <= 0.08, (step, weight, shares)
    events = [e.to_state for e in canary_events(job_id)]
    assert events.count("step_started") == 2 and events[-1] == "completed"
    assert "analysis_pass" in events and "promoting" in events
    lifecycle = client.get(f"/api/v1/versions/{v2}", headers=auth(app)).json()
    assert lifecycle["status"] == "ACTIVE"
    assert lifecycle["releases"][0]["rollout"]["canary"]["state"] == "completed"
    assert job(job_id).progress["canary"]["state"] == "completed"
    assert_consistent(app["id"])


def observed_shares(
    answers: list[tuple[Any, int, str]], *, canary_marker: str
) -> dict[int, tuple[int, float]]:
    """Per step index: (requests, canary share) as the client saw them."""
    by_step: dict[int, list[str]] = {}
    for label, _, text in answers:
        if isinstance(label, int):
            by_step.setdefault(label, []).append(text)
    return {
        step: (len(texts), round(sum(t == canary_marker for t in texts) / len(texts), 3))
        for step, texts in by_step.items()
    }


def test_failing_canary_aborts_at_the_failure_limit_and_stable_serves_everything(
    client: TestClient, app: dict[str, Any], images: dict[str, SiteImage]
) -> None:
    stable_id, url = serve(client, app, images["v1"])
    stable_containers = [(c.id, c.name) for c in containers(stable_id)]
    traffic = Traffic(url, [PAGE, "/"]).start()
    try:
        bad = site_version(app["id"], images["bad"])
        strategy = canary(30, 60, pause=30.0, failure_limit=2)
        body = promote_with(client, app, bad, strategy)
        canary_id, job_id = body["release"]["id"], body["job"]["id"]
        started = time.monotonic()
        assert Background(job_id).wait() == "failed"
        took = time.monotonic() - started
        after_abort = len(traffic.answers)
        time.sleep(1.5)
    finally:
        traffic.stop()

    assert took < 20, took  # well before the 30 s pause: aborted by analysis
    ended = job(job_id)
    assert ended.failure_reason == "canary_analysis_failed"
    failed = release(canary_id)
    assert failed.status == "FAILED" and failed.failure_reason == "canary_analysis_failed"
    diagnostics = failed.failure_diagnostics
    assert diagnostics is not None
    assert {"title", "description", "action", "evidence"} <= set(diagnostics)
    assert "kept serving" in diagnostics["action"]
    evidence = diagnostics["evidence"]
    assert evidence["thresholds"]["max_error_rate"] == 0.01
    verdicts = [a["verdict"] for a in evidence["intervals"]]
    assert verdicts.count("fail") == 2 and verdicts[-1] == "fail"  # aborted at the limit
    for interval in evidence["intervals"]:
        if interval["verdict"] == "fail":
            assert interval["error_rate"] > 0.01 and interval["requests"] >= 10
    state = failed.rollout["canary"]
    assert state["state"] == "aborted" and state["weight"] == 0 and state["step_index"] == 0
    # the stable version answered every request sent to it, and everything after the abort
    stable_answers = [(s, b) for _, s, b in traffic.answers if b == "canary-v1"]
    assert stable_answers and all(s == 200 for s, _ in stable_answers)
    tail = traffic.answers[after_abort:]
    assert len(tail) > 20 and all(s == 200 and b == "canary-v1" for _, s, b in tail)
    assert release(stable_id).status == "ACTIVE"
    assert [(c.id, c.name) for c in containers(stable_id)] == stable_containers
    assert containers(canary_id) == []
    assert_consistent(app["id"])
    events = [e.to_state for e in canary_events(job_id)]
    assert events.count("analysis_fail") == 2 and events[-1] == "aborted"


def test_too_little_traffic_never_passes(
    client: TestClient, app: dict[str, Any], images: dict[str, SiteImage]
) -> None:
    stable_id, url = serve(client, app, images["v1"])
    traffic = Traffic(url, ["/"], delay=0.1).start()  # < 10 requests/s, min_requests 50
    try:
        v2 = site_version(app["id"], images["v2"])
        strategy = canary(50, pause=0.5, min_requests=50, max_inconclusive=8)
        body = promote_with(client, app, v2, strategy)
        canary_id, job_id = body["release"]["id"], body["job"]["id"]
        assert Background(job_id).wait() == "failed"
    finally:
        traffic.stop()
    failed = release(canary_id)
    assert failed.failure_reason == "canary_analysis_failed"
    assert failed.failure_diagnostics is not None
    assert failed.failure_diagnostics["evidence"]["cause"] == "inconclusive"
    analyses = failed.rollout["canary"]["analyses"]
    assert len(analyses) == 8  # held at step 0 well past its 0.5 s pause, never advanced
    assert {a["verdict"] for a in analyses} == {"inconclusive"}
    assert {a["step_index"] for a in analyses} == {0}
    assert all(a["requests"] < 50 for a in analyses) and sum(a["requests"] for a in analyses)
    assert release(stable_id).status == "ACTIVE"
    assert all(s == 200 and b == "canary-v1" for _, s, b in traffic.answers if b != "canary-v2")
    assert_consistent(app["id"])


def test_pause_resume_promote_now_and_abort(
    client: TestClient, app: dict[str, Any], images: dict[str, SiteImage]
) -> None:
    stable_id, url = serve(client, app, images["v1"])
    traffic = Traffic(url, ["/"]).start()
    try:
        v2 = site_version(app["id"], images["v2"])
        body = promote_with(client, app, v2, canary(10, 50, 90, pause=1.0, min_requests=3))
        canary_id, job_id = body["release"]["id"], body["job"]["id"]
        rollout = Background(job_id)
        wait_canary(canary_id, step_index=0, state="analysing")
        control = f"/api/v1/jobs/{job_id}"
        assert client.post(f"{control}/pause", headers=auth(app)).json()["paused"] is True
        held = wait_canary(canary_id, state="paused", paused=True)
        time.sleep(3.0)  # three times the step's pause
        held = canary_state(canary_id)
        assert held["state"] == "paused" and held["step_index"] == 0 and held["weight"] == 10
        assert client.post(f"{control}/resume", headers=auth(app)).json()["paused"] is False
        wait_canary(canary_id, step_index=1, state="analysing")
        answer = client.post(f"{control}/promote-now", headers=auth(app))
        assert answer.status_code == 200 and answer.json()["control_request"] == "promote_now"
        started = time.monotonic()
        assert rollout.wait() == "succeeded"
        assert time.monotonic() - started < 5  # the 90 % step was skipped
        state = canary_state(canary_id)
        assert state["state"] == "completed"
        assert max(a["step_index"] for a in state["analyses"]) <= 1
        late = client.post(f"{control}/pause", headers=auth(app))
        assert late.status_code == 409, late.text

        # abort: the canary's traffic goes, v2 (now stable) keeps serving
        v3 = site_version(app["id"], images["v3"])
        body = promote_with(client, app, v3, canary(30, pause=30.0))
        third, job3 = body["release"]["id"], body["job"]["id"]
        rollout = Background(job3)
        wait_canary(third, step_index=0, state="analysing")
        wait_until(
            lambda: any(b == "canary-v3" for _, _, b in traffic.answers[-50:]),
            timeout=10,
            message="canary answers",
        )
        aborted = client.post(f"/api/v1/jobs/{job3}/abort", headers=auth(app))
        assert aborted.status_code == 200, aborted.text
        assert rollout.wait() == "cancelled"
        mark = len(traffic.answers)
        time.sleep(1.0)
    finally:
        traffic.stop()
    ended = job(job3)
    assert ended.failure_reason == "canary_aborted"
    gone = release(third)
    assert gone.status == "FAILED" and gone.failure_reason == "canary_aborted"
    assert gone.rollout["canary"]["state"] == "aborted" and containers(third) == []
    assert release(canary_id).status == "ACTIVE"
    tail = traffic.answers[mark:]
    assert tail and all(s == 200 and b == "canary-v2" for _, s, b in tail)
    assert all(s == 200 for _, s, _ in traffic.answers)
    assert_consistent(app["id"])

    audit = client.get(f"/api/v1/jobs/{job_id}/audit", headers=auth(app)).json()
    names = [e["to_state"] for e in audit if e["subject_type"] == "canary"]
    for name in ("pause_requested", "paused", "resume_requested", "resumed"):
        assert name in names, names
    assert "promote_now_requested" in names and names[-1] == "completed"
    requested = [e for e in audit if e["to_state"].endswith("_requested")]
    assert requested and all(e["actor"].startswith("token:") for e in requested), requested
    abort_audit = client.get(f"/api/v1/jobs/{job3}/audit", headers=auth(app)).json()
    assert "abort_requested" in [e["to_state"] for e in abort_audit]
    assert stable_id != canary_id
