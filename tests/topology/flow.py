"""The acceptance path every topology must carry, over HTTP only: publish a static site,
promote it, read it on its public URL, publish and promote v2, roll back to v1."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.processes import wait_until
from tests.test_archive import site_archive

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Api:
    """shipway's API at ``url`` with one bearer token."""

    url: str
    token: str
    timings: dict[str, float] = field(default_factory=dict)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def job(self, job_id: str, *, timeout: float) -> dict[str, Any]:
        """Wait until the job ends; its last state."""
        seen: dict[str, Any] = {}

        def ended() -> bool:
            seen.update(self.call("GET", f"/api/v1/jobs/{job_id}").json())
            return seen.get("state") in TERMINAL

        wait_until(ended, timeout=timeout, message=lambda: f"job {job_id} not done: {seen}")
        return seen


def body(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text.strip()
    except httpx.HTTPError as error:
        return type(error).__name__


def answers(url: str, expected: str, *, timeout: float = 60) -> None:
    """Wait until ``url`` answers ``expected`` 10 times in a row."""
    streak = [0]

    def steady() -> bool:
        streak[0] = streak[0] + 1 if body(url) == expected else 0
        return streak[0] >= 10

    wait_until(steady, timeout=timeout, message=lambda: f"{url} answers {body(url)!r}")


def publish_promote_rollback(
    api: Api,
    *,
    job_timeout: float = 300,
    report: Callable[[str], None] = print,
    created: Callable[[str], None] = lambda deployment: None,
    replicas: int = 1,
    promoted: Callable[[str], None] = lambda deployment: None,
) -> tuple[str, str]:
    """The whole path; returns the deployment id and its public URL (which answers v1
    again at the end). ``created`` is told the deployment id first (for cleaning up),
    ``promoted`` once v1 serves (to look at its replicas)."""
    made = api.call("POST", "/api/v1/deployments", json={"name": "site", "kind": "static"})
    assert made.status_code == 201, made.text
    deployment = str(made.json()["id"])
    created(deployment)
    if replicas != 1:
        patched = api.call(
            "PATCH", f"/api/v1/deployments/{deployment}", json={"replicas": replicas}
        )
        assert patched.status_code == 200, patched.text

    def step(name: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        started = time.monotonic()
        key = name.replace(" ", "-")
        answer = api.call(method, path, headers={"Idempotency-Key": key}, **kwargs)
        assert answer.status_code == 202, answer.text
        job = api.job(answer.json()["job"]["id"], timeout=job_timeout)
        assert job["state"] == "succeeded", job
        api.timings[name] = time.monotonic() - started
        return dict(answer.json())

    def publish(text: str) -> str:
        files = {"index.html": f"{text}\n".encode(), "healthz": b"ok\n"}
        archive = site_archive("tar.gz", files)
        source = {"source": ("site.tar.gz", archive, "application/gzip")}
        made = step(
            f"publish {text}", "POST", f"/api/v1/deployments/{deployment}/versions", files=source
        )
        return str(made["version"]["id"])

    def promote(version: str, text: str) -> None:
        path = f"/api/v1/deployments/{deployment}/versions/{version}/promote"
        step(f"promote {text}", "POST", path, json={"environment": "production"})

    v1 = publish("version one")
    promote(v1, "version one")
    environments = api.call("GET", f"/api/v1/deployments/{deployment}").json()["environments"]
    url = str(environments[0]["public_url"])
    answers(url, "version one")
    report(f"promoted v1: {url} answers it")
    promoted(deployment)
    v2 = publish("version two")
    promote(v2, "version two")
    answers(url, "version two")
    step(
        "rollback",
        "POST",
        f"/api/v1/deployments/{deployment}/rollback",
        json={"environment": "production"},
    )
    answers(url, "version one")
    report("steps: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in api.timings.items()))
    return deployment, url
