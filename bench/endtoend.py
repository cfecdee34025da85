"""Promote and rollback end to end: HTTP request → a real worker process → ACTIVE and
answering through HAProxy, in both modes, beside the raw Docker floor.

- **embedded**: a real ``shipway up`` process (SQLite and the filesystem broker in its
  data dir, the worker it starts itself);
- **production**: PostgreSQL and Redis started here, a ``shipway worker``, a ``shipway
  relay`` and the API as a uvicorn process (``shipway api``), each a process of its own.

Every figure is a client's: from sending the request (``POST …/promote`` or ``POST
…/rollback``) until the public URL answers the expected version (polled every 10 ms, as
the raw floor polls ``/healthz``). Where the time goes comes from the job's own
timestamps: request → job created (the API's transaction), created → claimed (the
broker and the worker picking the job up), then each phase, then ACTIVE → the client
sees the new version. The scale-down delay is 300 s, so a rollback right after a
promote is warm; for a cold one the retire that the delay scheduled is brought forward
(its ``not_before`` set to now) and the rollback waits until the old release is RETIRED.

Run through ``python -m bench.promote`` (``--modes``, ``--rounds``), which reports these
figures beside the in-process ones.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.common import median, use_settings
from bench.promote import (
    REPLICAS,
    Image,
    Rollouts,
    clean_up_deployments,
    raw_floor,
    seed_version,
)
from tests.e2e.conftest import wait_for_api
from tests.support.processes import Service, Supervisor, child_env, executable, wait_until
from tests.support.services import free_port, start_postgres, start_redis

MODES = ("embedded", "production")
POLL_SECONDS = 0.01
SETTINGS = {
    "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "300",  # warm rollbacks; cold ones retire first
    "SHIPWAY_STOP_TIMEOUT_SECONDS": "1",
    "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "5",
    "SHIPWAY_UP_STOP_TIMEOUT_SECONDS": "3",  # no job runs when the bench stops it
}


@dataclass
class Trip:
    """One timed rollout: seconds from the request until the URL answers, and its steps."""

    seconds: float
    steps: dict[str, float]


@dataclass
class Stack(Rollouts):
    """A running shipway (either mode) reached over HTTP, and what it started."""

    mode: str
    base_url: str
    token: str
    supervisor: Supervisor
    router_dir: Path
    processes: list[Service] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Idempotency-Key": secrets.token_hex(8)}

    def post(self, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        """POST to the API; the answer's JSON (its status must be ``status``)."""
        response = self.http.post(
            f"{self.base_url}/api/v1{path}", json=body, headers=self._headers()
        )
        if response.status_code != status:
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
        return dict(response.json())

    def deployment(self) -> str:
        """A new 3-replica container deployment."""
        body = {
            "name": f"bench-{secrets.token_hex(3)}",
            "kind": "container",
            "replicas": REPLICAS,
            "health_check_path": "/healthz",
        }
        dep = str(self.post("/deployments", body, 201)["id"])
        self.deployments.append(dep)
        return dep

    def _queued(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post(path, body, 202)

    def public_url(self, dep: str) -> str | None:
        """Production's public URL, from the API (None until the route exists)."""
        response = self.http.get(
            f"{self.base_url}/api/v1/deployments/{dep}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        envs = response.json()["environments"]
        url = next((e["public_url"] for e in envs if e["name"] == "production"), None)
        return str(url) if url else None

    def logs(self) -> str:
        """The tail of every process's log (for an error)."""
        return self.supervisor.logs()


def _token() -> str:
    from shipway.auth.service import create_token, get_or_create_workspace
    from shipway.db import transaction

    with transaction() as session:
        workspace = get_or_create_workspace(session, name="bench")
        _, secret = create_token(session, workspace_id=workspace.id, scopes=["deployments:write"])
    return str(secret)


@contextlib.contextmanager
def running(mode: str, folder: Path) -> Iterator[Stack]:
    """Start shipway in ``mode`` (every process in its own group) and stop all of it after."""
    from shipway.db import engine_for
    from shipway.migrate import upgrade

    saved = {k: v for k, v in os.environ.items() if k.startswith("SHIPWAY_")}
    router_dir = Path(tempfile.mkdtemp(prefix="swb-"))  # HAProxy's socket path is short
    supervisor = Supervisor(log_dir=folder / "logs")
    redis = postgres = None
    stack: Stack | None = None
    settings = {
        **SETTINGS,
        "SHIPWAY_DATA_DIR": str(folder / "data"),
        "SHIPWAY_ROUTER_DIR": str(router_dir),
        "SHIPWAY_DATABASE_URL": "",
        "SHIPWAY_BROKER_URL": "",
    }
    try:
        if mode == "production":
            redis, postgres = start_redis(folder / "redis"), start_postgres(folder / "pg")
            settings.update(SHIPWAY_DATABASE_URL=postgres.url(), SHIPWAY_BROKER_URL=redis.url)
        use_settings(settings)  # this process seeds versions and reads job rows
        (folder / "data").mkdir(parents=True, exist_ok=True)
        upgrade()
        env = child_env({**settings, "SHIPWAY_LOG_LEVEL": "INFO"})  # "ready."
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        shipway = executable("shipway")
        listen = ["--host", "127.0.0.1", "--port", str(port)]
        stack = Stack(mode, base_url, _token(), supervisor, router_dir)
        if mode == "embedded":
            up = supervisor.spawn("up", [shipway, "up", *listen], env=env)
            stack.processes.append(up)
            wait_for_api(up, base_url, timeout=90)
            up.wait_for_log("ready.", timeout=90)  # its worker consumes
        else:
            worker = supervisor.spawn(
                "worker",
                [shipway, "worker", "--queues", "builds,rollouts", "--hostname", "bench@prod"],
                env=env,
            )
            relay = supervisor.spawn("relay", [shipway, "relay"], env=env)
            api = supervisor.spawn("api", [shipway, "api", *listen], env=env)
            stack.processes += [worker, relay, api]
            wait_for_api(api, base_url, timeout=90)
            worker.wait_for_log("ready.", timeout=90)
            relay.wait_for_log("relay started", timeout=90)
        yield stack
    finally:
        if stack is not None:
            stack.http.close()
        supervisor.stop_all(grace=15)
        with contextlib.suppress(Exception):
            clean_up_deployments(stack.deployments if stack else [], router_dir)
        from shipway.config import get_settings

        with contextlib.suppress(Exception):
            engine_for(get_settings().resolved_database_url).dispose()
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop("immediate")
        for key in [k for k in os.environ if k.startswith("SHIPWAY_")]:
            del os.environ[key]
        os.environ.update(saved)
        get_settings.cache_clear()


# --------------------------------------------------------------------------- job rows


def job_row(job_id: str) -> Any:
    """The job's row (a fresh session each time)."""
    from shipway.db import session_factory
    from shipway.jobs.models import Job

    with session_factory()() as session:
        return session.get(Job, job_id)


def wait_job(job_id: str, stack: Stack, timeout: float = 120) -> None:
    """Until the job succeeded (a failed job raises, with the processes' logs)."""

    def done() -> bool:
        job = job_row(job_id)
        if job is not None and job.state in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job.state}: {job.failure_diagnostics}")
        return job is not None and job.state == "succeeded"

    wait_until(done, timeout=timeout, interval=0.05, message=lambda: stack.logs())


def timeline(job_id: str, sent: datetime, answered: datetime) -> dict[str, float]:
    """Seconds per step of a rollout up to the client seeing the new version: ``api``
    (request → job row), ``broker`` (created → claimed by the worker), ``prepare``
    (claimed → first phase), each phase before the release became ACTIVE, then
    ``answer`` (ACTIVE committed → the URL answered the new version; negative when HAProxy
    served it before the commit)."""
    from sqlalchemy import select

    from shipway.db import session_factory
    from shipway.events.models import Event

    job = job_row(job_id)
    with session_factory()() as session:
        events = session.execute(
            select(Event.subject_type, Event.to_state, Event.created_at)
            .where(Event.job_id == job_id)
            .order_by(Event.id)
        ).all()
    active = next(
        e.created_at for e in events if e.subject_type == "release" and e.to_state == "ACTIVE"
    )
    points: list[tuple[str, datetime]] = [
        ("api", sent),
        ("broker", job.created_at),
        ("prepare", job.started_at),
    ]
    points += [
        (e.to_state, e.created_at)
        for e in events
        if e.subject_type == "job_phase" and e.created_at <= active
    ]
    points += [("answer", active), ("", answered)]
    return {name: (end - start).total_seconds() for (name, start), (_, end) in pairwise(points)}


def until_serving(
    stack: Stack, dep: str, marker: str, send: Callable[[], dict[str, Any]]
) -> tuple[Trip, dict[str, Any]]:
    """Time ``send()`` until production's URL answers ``marker``; wait for the job to end."""
    poll = httpx.Client(timeout=2)
    url: str | None = None
    try:
        sent = datetime.now(UTC)
        started = time.perf_counter()
        body = send()
        while True:
            try:
                url = url or stack.public_url(dep)
                if url and poll.get(url + "/").text.strip() == marker:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"{url} never answered {marker}:\n{stack.logs()}")
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - started
        answered = datetime.now(UTC)
    finally:
        poll.close()
    wait_job(body["job"]["id"], stack)
    return Trip(seconds, timeline(body["job"]["id"], sent, answered)), body


def retire_now(release_id: str, stack: Stack) -> None:
    """Bring the scheduled retire of ``release_id`` forward and wait until it is RETIRED."""
    from sqlalchemy import update

    from shipway.catalog.models import Release
    from shipway.db import session_factory, transaction
    from shipway.ids import utcnow
    from shipway.jobs.models import Job

    with transaction() as session:
        session.execute(
            update(Job)
            .where(Job.kind == "retire", Job.release_id == release_id, Job.state == "queued")
            .values(not_before=utcnow())
        )

    def retired() -> bool:
        with session_factory()() as session:
            release = session.get(Release, release_id)
            return release is not None and release.status == "RETIRED"

    wait_until(retired, timeout=120, interval=0.1, message=lambda: stack.logs())


# --------------------------------------------------------------------------- rounds


@dataclass
class Round:
    """One round's trips and the raw floors sampled around them."""

    first: Trip
    replace: Trip
    warm: Trip
    cold: Trip | None  # None in a quick round
    raw: list[float]


def one_round(
    stack: Stack, engine: docker.DockerClient, images: list[Image], cold_too: bool = True
) -> Round:
    """First and replacing promote and a warm rollback on one deployment, a cold rollback
    on a second one (unless not ``cold_too``); the raw floor sampled around each figure."""

    v1_image, v2_image = images
    raw = [raw_floor(engine, v1_image)]
    dep = stack.deployment()
    v1, v2 = seed_version(dep, v1_image), seed_version(dep, v2_image)
    first, _ = until_serving(stack, dep, v1_image.marker, lambda: stack.promote(dep, v1))
    raw.append(raw_floor(engine, v1_image))
    replace, _ = until_serving(stack, dep, v2_image.marker, lambda: stack.promote(dep, v2))
    raw.append(raw_floor(engine, v1_image))
    warm, _ = until_serving(stack, dep, v1_image.marker, lambda: stack.rollback(dep))
    if "scale" in warm.steps:
        raise RuntimeError("expected a warm rollback (no scale phase)")
    if not cold_too:
        return Round(first=first, replace=replace, warm=warm, cold=None, raw=raw)
    # Cold: v1 then v2 on a new deployment, v1's retire brought forward, roll back to v1.
    dep = stack.deployment()
    v1, v2 = seed_version(dep, v1_image), seed_version(dep, v2_image)
    _, one = until_serving(stack, dep, v1_image.marker, lambda: stack.promote(dep, v1))
    until_serving(stack, dep, v2_image.marker, lambda: stack.promote(dep, v2))
    retire_now(one["release"]["id"], stack)
    raw.append(raw_floor(engine, v1_image))
    cold, _ = until_serving(stack, dep, v1_image.marker, lambda: stack.rollback(dep))
    if "scale" not in cold.steps:
        raise RuntimeError("expected a cold rollback (a scale phase)")
    raw.append(raw_floor(engine, v1_image))
    return Round(first=first, replace=replace, warm=warm, cold=cold, raw=raw)


@dataclass
class ModeResult:
    """Every round of one mode."""

    mode: str
    rounds: list[Round]
    load: list[float]  # load average (1 min) at the start and the end

    def raw(self) -> float:
        """The mode's baseline: the median of every raw floor sampled in its rounds."""
        return median([s for r in self.rounds for s in r.raw])

    def figure(self, attr: str, rounds: list[Round] | None = None) -> float:
        """Median seconds of one trip over the rounds."""
        return median([getattr(r, attr).seconds for r in rounds or self.rounds])

    def has(self, attr: str) -> bool:
        """Whether every round measured this trip (a quick one has no cold rollback)."""
        return all(getattr(r, attr) is not None for r in self.rounds)

    def steps(self, attr: str) -> str:
        """Median ms per step of one trip, in order."""
        names = list(getattr(self.rounds[-1], attr).steps)
        steps = [getattr(r, attr).steps for r in self.rounds]
        return ", ".join(
            f"{name} {median([s.get(name, 0.0) for s in steps]) * 1000:.0f}" for name in names
        )


def measure(
    mode: str, engine: docker.DockerClient, images: list[Image], rounds: int, quick: bool
) -> ModeResult:
    """``rounds`` rounds against a fresh stack of ``mode`` (quick: no cold rollback)."""
    from bench.common import scratch

    with scratch(f"shipway-bench-{mode}-") as folder, running(mode, folder) as stack:
        load = [os.getloadavg()[0]]
        results = [one_round(stack, engine, images, not quick) for _ in range(rounds)]
        load.append(os.getloadavg()[0])
    return ModeResult(mode, results, load)
