"""Health checks of new replicas: probes, thresholds, deadlines and fast crash detection."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import httpx

from shipway.jobs.context import JobFailed
from shipway.runtime.base import Replica, Runtime

BODY_EXCERPT = 300
CRASH_CHECK_EVERY = 0.2  # seconds between asking the engine whether a replica still runs
FIRST_PROBE_PAUSE = 0.01  # seconds; grows 1.5x a round while replicas refuse connections


@dataclass(frozen=True)
class HealthPolicy:
    """How replicas are judged healthy (per deployment, ``settings.health``)."""

    grace_period_seconds: float = 0.0
    interval_seconds: float = 0.5
    timeout_seconds: float = 2.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    deadline_seconds: float = 60.0

    @classmethod
    def from_settings(cls, values: dict[str, Any] | None) -> HealthPolicy:
        """Build from a deployment's ``settings["health"]``, ignoring unknown keys."""
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Probe:
    """One HTTP probe of one replica."""

    status_code: int | None
    error: str | None
    body_excerpt: str
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        """2xx and 3xx are healthy."""
        return self.status_code is not None and 200 <= self.status_code < 400

    def as_evidence(self) -> dict[str, Any]:
        """JSON-able facts."""
        return {
            "status_code": self.status_code,
            "error": self.error,
            "body_excerpt": self.body_excerpt,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


@lru_cache(maxsize=1)
def probe_client() -> httpx.Client:
    """One client per process: building one costs about 20 ms (its TLS context).

    No keep-alive: every probe opens its own connection, as a load balancer's check
    does, so a connection pooled to a replica that has since gone never fails a probe.
    """
    return httpx.Client(follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0))


def probe(url: str, *, timeout_seconds: float) -> Probe:
    """GET ``url`` once."""
    started = time.monotonic()
    try:
        response = probe_client().get(url, timeout=timeout_seconds)
    except httpx.HTTPError as error:
        return Probe(None, f"{type(error).__name__}: {error}", "", _ms(started))
    return Probe(response.status_code, None, response.text[:BODY_EXCERPT], _ms(started))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


@dataclass
class _Tracker:
    replica: Replica
    successes: int = 0
    http_failures: int = 0
    probes: list[Probe] = field(default_factory=list)
    # The scale phase saw the container start: the first question to the engine can
    # wait CRASH_CHECK_EVERY (an inspect costs 5-15 ms, asked for every replica in turn).
    crash_checked_at: float = field(default_factory=time.monotonic)

    @property
    def url_base(self) -> str:
        endpoint = self.replica.endpoint
        assert endpoint is not None, "probed only with an endpoint"
        return endpoint.url()


def wait_until_healthy(
    *,
    runtime: Runtime,
    replicas: list[Replica],
    path: str,
    policy: HealthPolicy,
    checkpoint: Callable[[], None],
    report: Callable[[int, int], None] = lambda healthy, total: None,
) -> list[dict[str, Any]]:
    """Probe every replica until all pass, or raise JobFailed with a classified reason.

    ``crash_loop`` as soon as a replica's container stops running (no waiting for the
    deadline); ``health_check_failed`` after ``unhealthy_threshold`` consecutive HTTP
    error answers; ``health_check_timeout`` if the deadline passes without answers.
    """
    started = time.monotonic()
    trackers = [_Tracker(replica) for replica in replicas]
    rounds = 0
    if policy.grace_period_seconds:
        time.sleep(policy.grace_period_seconds)
    while True:
        checkpoint()
        for tracker in trackers:
            if tracker.successes >= policy.healthy_threshold:
                continue
            # no published port: the container stopped before the scale phase could read it
            no_port = tracker.replica.endpoint is None
            if no_port or time.monotonic() - tracker.crash_checked_at >= CRASH_CHECK_EVERY:
                _crash_check(runtime, tracker)
                tracker.crash_checked_at = time.monotonic()
            result = (
                Probe(None, "the container has no published port", "", 0.0)
                if no_port
                else probe(tracker.url_base + path, timeout_seconds=policy.timeout_seconds)
            )
            tracker.probes = [*tracker.probes[-4:], result]
            if result.ok:
                tracker.successes += 1
                tracker.http_failures = 0
            else:
                tracker.successes = 0
                tracker.http_failures += result.status_code is not None
                if tracker.http_failures >= policy.unhealthy_threshold:
                    raise JobFailed("health_check_failed", _failed(tracker, path, policy))
        healthy = sum(t.successes >= policy.healthy_threshold for t in trackers)
        report(healthy, len(trackers))
        if healthy == len(trackers):
            return [
                {"replica": t.replica.name, "last_probe": t.probes[-1].as_evidence()}
                for t in trackers
            ]
        if time.monotonic() - started > policy.deadline_seconds:
            for tracker in trackers:
                _crash_check(runtime, tracker)
            raise JobFailed("health_check_timeout", _timeout(trackers, path, policy))
        time.sleep(_pause(policy, rounds, trackers))
        rounds += 1


def _pause(policy: HealthPolicy, rounds: int, trackers: list[_Tracker]) -> float:
    """Seconds until the next round of probes.

    While replicas only refuse connections (the server is still starting) probes
    start fast and back off to the policy's interval: a server that is up 60 ms
    after start is not kept waiting a whole interval. Once any probe got an HTTP
    answer the policy's interval applies, so thresholds keep their meaning.
    """
    answered = any(p.status_code is not None for t in trackers for p in t.probes)
    if answered:
        return policy.interval_seconds
    return min(policy.interval_seconds, FIRST_PROBE_PAUSE * 1.5**rounds)


def _crash_check(runtime: Runtime, tracker: _Tracker) -> None:
    current = runtime.inspect_replica(tracker.replica.id)
    if current is not None and current.running:
        return
    logs = runtime.logs(tracker.replica.id, tail=20) if current is not None else []
    exit_code = current.exit_code if current is not None else None
    raise JobFailed(
        "crash_loop",
        {
            "title": "Replica crashed on start",
            "description": (
                f"Replica {tracker.replica.name} stopped running "
                f"(exit code {exit_code}) before it became healthy."
                + (
                    " It was killed for using too much memory."
                    if current and current.oom_killed
                    else ""
                )
            ),
            "action": (
                "Run the image locally and read its output below; check the start command, "
                "the port it listens on and the memory limit. Replicas run hardened (no "
                "capabilities beyond a few, no-new-privileges; static sites as nobody on a "
                "read-only root): an app that needs more can set the deployment's "
                "hardened: false (docs/security.md)."
            ),
            "evidence": {
                "replica": tracker.replica.name,
                "container_id": tracker.replica.id[:12],
                "exit_code": exit_code,
                "status": current.status if current else "removed",
                "oom_killed": bool(current and current.oom_killed),
                "restart_count": current.restart_count if current else None,
                "last_log_lines": logs,
            },
        },
    )


def _failed(tracker: _Tracker, path: str, policy: HealthPolicy) -> dict[str, Any]:
    last = tracker.probes[-1]
    return {
        "title": "Health check failed",
        "description": (
            f"Replica {tracker.replica.name} answered GET {path} with HTTP {last.status_code} "
            f"{policy.unhealthy_threshold} times in a row."
        ),
        "action": (
            f"Make GET {path} answer 2xx once the app is ready, or set the deployment's "
            "health_check_path to an endpoint that does."
        ),
        "evidence": {
            "replica": tracker.replica.name,
            "path": path,
            "probes": [p.as_evidence() for p in tracker.probes],
            "unhealthy_threshold": policy.unhealthy_threshold,
        },
    }


def _timeout(trackers: list[_Tracker], path: str, policy: HealthPolicy) -> dict[str, Any]:
    pending = [t for t in trackers if t.successes < policy.healthy_threshold]
    return {
        "title": "Health check timed out",
        "description": (
            f"{len(pending)} of {len(trackers)} replica(s) did not answer GET {path} "
            f"successfully within {policy.deadline_seconds:g} seconds."
        ),
        "action": (
            "Check that the app listens on the deployment's runtime_port on all interfaces "
            "(0.0.0.0) and starts within the deadline; raise settings.health.deadline_seconds "
            "if it is slow to boot."
        ),
        "evidence": {
            "path": path,
            "deadline_seconds": policy.deadline_seconds,
            "replicas": {t.replica.name: [p.as_evidence() for p in t.probes] for t in pending},
        },
    }
