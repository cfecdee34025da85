"""Probe rounds of the health monitor: which serving releases are due, and probing them.

A round probes every replica of a release at once (HTTP GET of the health check
path on each replica's host port, ``policy.health.timeout_seconds`` each,
concurrently); it passes when every replica answers 2xx/3xx. A replica container
that is not running, or a release without replicas, fails it. The secret values of a
release's config are redacted from what a round records (an app's answer may echo one).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.config_vars.redact import redact
from shipway.config_vars.service import secret_values
from shipway.crypto import SecretsKeyError
from shipway.deployments.policy import EnvironmentPolicy, parse_policy
from shipway.releases.health import probe
from shipway.runtime.base import Replica

MONITORED = ("ACTIVE", "UNHEALTHY")
SECRETS_CACHED = 256  # config versions whose secret values this process keeps for redaction
_secrets: dict[tuple[str, str, int], list[str]] = {}


@dataclass
class Candidate:
    """A release due for a probe round, with what is needed to probe it."""

    release_id: str
    status: str
    path: str
    policy: EnvironmentPolicy
    replicas: list[Replica] = field(default_factory=list)
    # redacted from its rounds; None: unreadable (a dropped key), so bodies are left out
    secrets: list[str] | None = field(default_factory=list, repr=False)


def due(session: Session, *, now: datetime) -> list[Candidate]:
    """Serving releases whose probe interval has elapsed."""
    rows = session.execute(
        select(Release, Environment.policy, Deployment.health_check_path, Version.health_check_path)
        .join(Deployment, Deployment.id == Release.deployment_id)
        .join(Version, Version.id == Release.version_id)
        .outerjoin(
            Environment,
            (Environment.deployment_id == Release.deployment_id)
            & (Environment.name == Release.environment),
        )
        .where(Release.status.in_(MONITORED))
        .order_by(Release.health_checked_at.is_not(None), Release.health_checked_at)
    ).all()
    found = []
    for release, raw_policy, deployment_path, version_path in rows:
        policy = parse_policy(raw_policy)
        last = release.health_checked_at
        if last is not None and (now - last).total_seconds() < policy.health.interval_seconds:
            continue
        found.append(
            Candidate(
                release_id=release.id,
                status=release.status,
                path=version_path or deployment_path or "/",
                policy=policy,
                secrets=_secrets_of(session, release),
            )
        )
    return found


def _secrets_of(session: Session, release: Release) -> list[str] | None:
    """The secret values of the release's config (decrypted once per config version); None
    when no configured key opens them: monitoring goes on, without response bodies."""
    if release.config_version is None:
        return []
    key = (release.deployment_id, release.environment, release.config_version)
    if key not in _secrets:
        try:
            values = secret_values(
                session,
                deployment_id=release.deployment_id,
                environment=release.environment,
                numbers=[release.config_version],
            )
        except SecretsKeyError:
            return None
        if len(_secrets) >= SECRETS_CACHED:
            _secrets.clear()
        _secrets[key] = values
    return _secrets[key]


def _probe_replica(replica: Replica, path: str, timeout: float) -> dict[str, Any]:
    endpoint = replica.endpoint
    if not replica.running or endpoint is None:
        return {
            "replica": replica.name,
            "ok": False,
            "status_code": None,
            "error": f"container {replica.status}"
            + (f" (exit code {replica.exit_code})" if replica.exit_code is not None else ""),
            "body_excerpt": "",
            "elapsed_ms": 0.0,
        }
    result = probe(endpoint.url(path), timeout_seconds=timeout)
    return {"replica": replica.name, "ok": result.ok, **result.as_evidence()}


def probe_all(
    candidates: list[Candidate], *, now: datetime, max_parallel: int
) -> dict[str, dict[str, Any]]:
    """One round per candidate: every replica probed concurrently; release id → round."""
    tasks = [(candidate, replica) for candidate in candidates for replica in candidate.replicas]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    if tasks:
        with ThreadPoolExecutor(
            max_workers=max(1, min(max_parallel, len(tasks))), thread_name_prefix="probe"
        ) as pool:
            futures = {
                (c.release_id, r.id): pool.submit(
                    _probe_replica, r, c.path, c.policy.health.timeout_seconds
                )
                for c, r in tasks
            }
            results = {key: future.result() for key, future in futures.items()}
    rounds = {}
    for candidate in candidates:
        probes = [results[(candidate.release_id, r.id)] for r in candidate.replicas]
        rounds[candidate.release_id] = {
            "at": now.isoformat(),
            "path": candidate.path,
            "ok": bool(probes) and all(p["ok"] for p in probes),
            "replicas": _cleaned(probes, candidate.secrets),
            **({} if probes else {"error": "no replica containers found"}),
        }
    return rounds


def _cleaned(probes: list[dict[str, Any]], secrets: list[str] | None) -> list[dict[str, Any]]:
    if secrets is None:
        return [{**p, "body_excerpt": ""} for p in probes]
    cleaned: list[dict[str, Any]] = redact(probes, secrets)
    return cleaned
