"""Promote and rollback benchmark: shipway against the raw Docker engine, in one run.

Run from the repository root (Docker engine and HAProxy required)::

    .venv/bin/python -m bench.promote            # (make bench runs it through bench/__main__.py)
    .venv/bin/python -m bench.promote --rounds 5 --health-interval 0.05

Measured for a 3-replica static site (busybox httpd, built FROM the base image):

- raw floor: ``docker create`` + ``start`` of 3 containers in parallel threads (the
  options shipway uses), then each polled every 10 ms until GET /healthz answers
  200 — what any orchestrator must pay;
- shipway promote: job created → release ACTIVE (``deployed_at``), the job run
  in-process with ``run_job`` so no broker latency is counted; the first promote of
  an environment (HAProxy route created: config reload) and a replacing promote
  (route exists) separately;
- warm rollback (scale-down delay 300 s): ``POST /rollback`` sent → the public URL
  answers the old version (the job started in-process as soon as the API answered);
- cold rollback (scale-down delay 0: old replicas gone): the same, plus new replicas;
- end to end with a real ``shipway worker`` process (embedded filesystem broker):
  promote request → ACTIVE, for information.

Figures are medians over ``--rounds``; each round uses a fresh deployment. The raw
floor is sampled before and after each shipway figure (five times a round) and the
baseline is the median of all samples, so a slow or fast moment of the engine does
not decide a ratio. Everything it starts (containers, images, HAProxy, worker) is
removed at the end. Results are printed (``make bench`` puts them in bench/RESULTS.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from bench.common import arguments, print_section

BASE_IMAGE = "shipway/busybox:local"
BENCH_LABEL = "shipway.bench"
# The raw floor's containers carry this value: a clean-up removes only this run's. (Every
# container of a bench image carries the image's label, shipway.bench=1, so a clean-up by
# the label alone removed the replicas of other bench runs on the same engine too.)
RAW_LABEL_VALUE = f"raw-{os.getpid()}-{secrets.token_hex(3)}"
REPLICAS = 3
PROMOTE_TARGET = 1.3
WARM_TARGET_MS = 100.0
WARM_RATIO_TARGET = 2.0  # end-to-end warm rollback / the in-process one


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Image:
    """A bench image: tag, id and the marker its ``/`` answers."""

    tag: str
    id: str
    marker: str


def build_image(engine: docker.DockerClient, marker: str) -> Image:
    """A tiny site image FROM the base image whose ``/`` answers ``marker``."""
    context = Path(tempfile.mkdtemp(prefix="sw-bench-"))
    try:
        (context / "www").mkdir()
        (context / "www" / "index.html").write_text(f"{marker}\n")
        (context / "www" / "healthz").write_text("ok\n")
        (context / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY www/ /srv/www/\nEXPOSE 8080\n"
            'CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]\n'
        )
        tag = f"shipway-bench/{marker}:{secrets.token_hex(3)}"
        image, _ = engine.images.build(
            path=str(context), tag=tag, labels={BENCH_LABEL: "1"}, rm=True, pull=False
        )
        assert image.id is not None
        return Image(tag=tag, id=image.id, marker=marker)
    finally:
        shutil.rmtree(context, ignore_errors=True)


# --------------------------------------------------------------------------- raw floor


def raw_floor(engine: docker.DockerClient, image: Image, replicas: int = REPLICAS) -> float:
    """Seconds to start ``replicas`` containers in parallel until each answers /healthz."""

    def one(index: int) -> str:
        container = engine.containers.create(
            image.tag,
            name=f"sw-bench-raw-{secrets.token_hex(3)}-{index}",
            labels={BENCH_LABEL: RAW_LABEL_VALUE},
            detach=True,
            ports={"8080/tcp": ("127.0.0.1", None)},
            restart_policy={"Name": "no"},
            init=True,
        )
        container.start()
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if poll.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return str(container.id)
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"raw container {container.name} never became healthy")

    # One client, made before the clock starts, without keep-alive: as shipway probes.
    poll = httpx.Client(timeout=1, limits=httpx.Limits(max_keepalive_connections=0))
    started = time.perf_counter()
    with poll, ThreadPoolExecutor(replicas) as pool:
        ids = list(pool.map(one, range(replicas)))
    elapsed = time.perf_counter() - started
    for container_id in ids:
        engine.api.remove_container(container_id, force=True)
    return elapsed


# --------------------------------------------------------------------------- shipway


class Rollouts:
    """Promote and rollback requests of production; ``_queued`` sends one (202 expected)."""

    def _queued(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def promote(
        self, dep: str, version_id: str, strategy: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``POST …/promote`` to production (a ``strategy``, e.g. a canary, if given)."""
        body: dict[str, Any] = {"environment": "production"}
        if strategy is not None:
            body["strategy"] = strategy
        return self._queued(f"/deployments/{dep}/versions/{version_id}/promote", body)

    def rollback(self, dep: str) -> dict[str, Any]:
        """``POST …/rollback`` of production."""
        return self._queued(f"/deployments/{dep}/rollback", {"environment": "production"})


@dataclass
class Shipway(Rollouts):
    """An in-process shipway (API + job runner) on a scratch SQLite database."""

    scratch: Path
    router_dir: Path
    client: Any = None
    token: str = ""
    deployments: list[str] = field(default_factory=list)

    def headers(self, key: bool = False) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if key:
            headers["Idempotency-Key"] = secrets.token_hex(8)
        return headers

    def deployment(self, health_interval: float | None) -> str:
        from shipway.catalog.models import Deployment
        from shipway.db import transaction

        response = self.client.post(
            "/api/v1/deployments",
            json={
                "name": f"bench-{secrets.token_hex(3)}",
                "kind": "container",
                "replicas": REPLICAS,
                "health_check_path": "/healthz",
            },
            headers=self.headers(),
        )
        assert response.status_code == 201, response.text
        dep = str(response.json()["id"])
        if health_interval is not None:
            with transaction() as session:
                row = session.get(Deployment, dep)
                assert row is not None
                health = dict((row.settings or {}).get("health") or {})
                row.settings = {
                    **(row.settings or {}),
                    "health": {**health, "interval_seconds": health_interval},
                }
        self.deployments.append(dep)
        return dep

    def version(self, dep: str, image: Image) -> str:
        return seed_version(dep, image)

    def _queued(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(f"/api/v1{path}", json=body, headers=self.headers(key=True))
        assert response.status_code == 202, response.text
        return dict(response.json())

    def public_url(self, dep: str) -> str:
        body = self.client.get(f"/api/v1/deployments/{dep}", headers=self.headers()).json()
        return str(next(e for e in body["environments"] if e["name"] == "production")["public_url"])


def seed_version(dep: str, image: Image) -> str:
    """A ready version of ``image`` in ``dep``, as a publish job records it (database)."""
    from tests.support.seed import built_version

    return built_version(
        dep,
        image_id=image.id,
        image_tag=image.tag,
        command="httpd -f -p 8080 -h /srv/www",
        actor="bench",
    )


def run_job(job_id: str) -> None:
    from shipway.jobs.runner import run_job as run

    state = run(job_id)
    if state != "succeeded":
        from shipway.db import session_factory
        from shipway.jobs.models import Job

        with session_factory()() as session:
            job = session.get(Job, job_id)
            raise RuntimeError(f"job {job_id} {state}: {job.failure_diagnostics if job else ''}")


def created_to_active(job_id: str, release_id: str) -> float:
    """Seconds from the job's creation to its release's switch (database timestamps)."""
    from shipway.catalog.models import Release
    from shipway.db import session_factory
    from shipway.jobs.models import Job

    with session_factory()() as session:
        job = session.get(Job, job_id)
        release = session.get(Release, release_id)
        assert job is not None and release is not None and release.deployed_at is not None
        return (release.deployed_at - job.created_at).total_seconds()


def breakdown(job_id: str) -> dict[str, float]:
    """Seconds spent per step of a promote up to ACTIVE: claim, scale, health check, switch."""
    from sqlalchemy import select

    from shipway.catalog.models import Release
    from shipway.db import session_factory
    from shipway.events.models import Event
    from shipway.jobs.models import Job

    with session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.started_at is not None and job.release_id
        release = session.get(Release, job.release_id)
        assert release is not None and release.deployed_at is not None
        marks = dict(
            session.execute(
                select(Event.to_state, Event.created_at).where(
                    Event.job_id == job_id, Event.subject_type == "job_phase"
                )
            ).all()
        )
    points = [
        ("claim", job.created_at),
        ("prepare", job.started_at),
        ("scale", marks["scale"]),
        ("health_check", marks["health_check"]),
        ("switch", marks["switch"]),
        ("", release.deployed_at),
    ]
    steps = pairwise(points)
    return {name: (end - start).total_seconds() for (name, start), (_, end) in steps}


def time_until_serving(
    url: str, marker: str, request: Callable[[], dict[str, Any]]
) -> tuple[float, dict[str, Any]]:
    """Seconds from ``request()`` until ``url`` answers ``marker`` (job run in a thread)."""
    started = time.perf_counter()
    body = request()
    runner = threading.Thread(target=run_job, args=(body["job"]["id"],), daemon=True)
    runner.start()
    with httpx.Client(timeout=2) as poll:
        while True:
            try:
                if poll.get(url + "/").text.strip() == marker:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"{url} never answered {marker}")
            # Every 10 ms, as the raw floor polls: a tighter loop in this process takes
            # the GIL and a CPU from the job it measures (cold rollback scale +100 ms).
            time.sleep(0.01)
    elapsed = time.perf_counter() - started
    runner.join(120)
    return elapsed, body


def set_delay(seconds: float) -> None:
    from shipway.config import get_settings

    os.environ["SHIPWAY_SCALE_DOWN_DELAY_SECONDS"] = str(seconds)
    get_settings.cache_clear()


@dataclass
class Round:
    """One round's figures (seconds)."""

    first: float
    replace: float
    warm: float
    cold: float
    raw: list[float]  # the raw floor, measured before and after each shipway figure
    first_steps: dict[str, float] = field(default_factory=dict)
    replace_steps: dict[str, float] = field(default_factory=dict)
    cold_steps: dict[str, float] = field(default_factory=dict)


def one_round(
    ship: Shipway, engine: docker.DockerClient, images: list[Image], interval: float | None
) -> Round:
    """Promote (first, replacing), warm and cold rollback, each between two raw floors.

    The engine's speed drifts within a run (a raw floor ranges over ±15 %), so the
    baseline is sampled around every shipway figure rather than once.
    """
    v1_image, v2_image = images
    raw = [raw_floor(engine, v1_image)]
    # First promote of an environment, then a replacing one (delay 300: v1 stays warm).
    set_delay(300)
    dep = ship.deployment(interval)
    v1, v2 = ship.version(dep, v1_image), ship.version(dep, v2_image)
    one = ship.promote(dep, v1)
    run_job(one["job"]["id"])
    first = created_to_active(one["job"]["id"], one["release"]["id"])
    raw.append(raw_floor(engine, v1_image))
    two = ship.promote(dep, v2)
    run_job(two["job"]["id"])
    replace = created_to_active(two["job"]["id"], two["release"]["id"])
    raw.append(raw_floor(engine, v1_image))
    url = ship.public_url(dep)

    def rollback() -> dict[str, Any]:
        return ship.rollback(dep)  # ``dep`` is the cold deployment further down

    warm, body = time_until_serving(url, v1_image.marker, rollback)
    assert body["release"]["id"] == one["release"]["id"], "expected a warm rollback"
    # Cold: a new deployment, delay 0 (v1's replicas removed when v2 replaces them).
    set_delay(0)
    dep = ship.deployment(interval)
    v1, v2 = ship.version(dep, v1_image), ship.version(dep, v2_image)
    for version_id in (v1, v2):
        run_job(ship.promote(dep, version_id)["job"]["id"])
    url = ship.public_url(dep)
    raw.append(raw_floor(engine, v1_image))
    cold, body = time_until_serving(url, v1_image.marker, rollback)
    assert body["release"]["id"] != one["release"]["id"]
    raw.append(raw_floor(engine, v1_image))
    return Round(
        first=first,
        replace=replace,
        warm=warm,
        cold=cold,
        raw=raw,
        first_steps=breakdown(one["job"]["id"]),
        replace_steps=breakdown(two["job"]["id"]),
        cold_steps=breakdown(body["job"]["id"]),
    )


# --------------------------------------------------------------------------- setup


@contextmanager
def shipway_in(scratch: Path) -> Iterator[Shipway]:
    """Point shipway at a scratch data dir (SQLite, filesystem broker, own router)."""
    router_dir = Path(tempfile.mkdtemp(prefix="swb-"))
    os.environ.update(
        SHIPWAY_DATA_DIR=str(scratch / "data"),
        SHIPWAY_DATABASE_URL="",
        SHIPWAY_BROKER_URL="",
        SHIPWAY_ROUTER_DIR=str(router_dir),
        SHIPWAY_STOP_TIMEOUT_SECONDS="1",
        SHIPWAY_DRAIN_TIMEOUT_SECONDS="5",
        SHIPWAY_SCALE_DOWN_DELAY_SECONDS="0",
    )
    from shipway.config import get_settings

    get_settings.cache_clear()
    (scratch / "data").mkdir(parents=True, exist_ok=True)
    from fastapi.testclient import TestClient

    from shipway.api import create_app
    from shipway.auth.service import create_token, get_or_create_workspace
    from shipway.db import transaction
    from shipway.migrate import upgrade

    upgrade()
    with transaction() as session:
        workspace = get_or_create_workspace(session, name="bench")
        _, secret = create_token(session, workspace_id=workspace.id, scopes=["deployments:write"])
    ship = Shipway(scratch=scratch, router_dir=router_dir, token=secret)
    try:
        with TestClient(create_app(), raise_server_exceptions=True) as client:
            ship.client = client
            yield ship
    finally:
        clean_up(ship)


def clean_up(ship: Shipway) -> None:
    """Remove every container of the bench's deployments, and stop its HAProxy."""
    clean_up_deployments(ship.deployments, ship.router_dir)


def clean_up_deployments(deployments: list[str], router_dir: Path) -> None:
    """Remove every container of ``deployments`` and this run's raw-floor leftovers, stop
    the HAProxy of ``router_dir`` and remove that folder."""
    from shipway.router.haproxy import HAProxyRouter

    engine = docker.from_env()
    try:
        labels = [f"shipway.deployment={dep}" for dep in deployments]
        labels.append(f"{BENCH_LABEL}={RAW_LABEL_VALUE}")  # never other runs' containers
        for label in labels:
            for summary in engine.api.containers(all=True, filters={"label": label}):
                with suppress(docker.errors.NotFound):  # being removed already
                    engine.api.remove_container(summary["Id"], force=True)
    finally:
        engine.close()
    if (router_dir / "haproxy.pid").exists():
        HAProxyRouter(router_dir).stop()
    shutil.rmtree(router_dir, ignore_errors=True)


# --------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values)


def raw_median(rounds: list[Round]) -> float:
    """The baseline: the median of every raw floor sampled in the run."""
    return median([sample for r in rounds for sample in r.raw])


def steps_breakdown(rounds: list[Round]) -> str:
    """Median time of each phase: first and replacing promotes, cold rollback."""
    return "where a promote's time goes (median ms): " + "; ".join(
        f"{label}: "
        + ", ".join(
            f"{step} {median([getattr(r, attr)[step] for r in rounds]) * 1000:.0f}"
            for step in getattr(rounds[0], attr)
        )
        for label, attr in (
            ("first", "first_steps"),
            ("replacing", "replace_steps"),
            ("cold rollback", "cold_steps"),
        )
    )


def per_round(rounds: list[Round]) -> str:
    """Every round's figures, to show the spread behind the medians."""
    return "per round (ms): " + "; ".join(
        f"raw {'/'.join(f'{x * 1000:.0f}' for x in r.raw)} first {r.first * 1000:.0f} "
        f"replace {r.replace * 1000:.0f} warm {r.warm * 1000:.0f} cold {r.cold * 1000:.0f}"
        for r in rounds
    )


def section(rounds: list[Round], modes: list[Any], interval: float | None = None) -> Any:
    """The figures as a results Section of ``bench/RESULTS.md``: end to end per mode (the
    targets), then the in-process figures (for information)."""
    from bench.common import Section, ms
    from shipway.releases.health import HealthPolicy

    out = Section("promote", "Promote and rollback vs the raw Docker floor")
    warm_in_process = median([r.warm for r in rounds])
    for result in modes:
        end_to_end_rows(out, result, warm_in_process)
    raw = raw_median(rounds)
    samples = sum(len(r.raw) for r in rounds)
    out.add(f"in-process: raw floor ({samples} samples)", ms(raw))
    for name, attr in (
        ("in-process: promote, first in environment (route created)", "first"),
        ("in-process: promote, replacing (route exists)", "replace"),
        ("in-process: cold rollback: POST /rollback → old version answers", "cold"),
    ):
        value = median([getattr(r, attr) for r in rounds])
        out.add(name, ms(value), baseline=ms(raw), ratio=value / raw, target="for information")
    out.add(
        "in-process: warm rollback: POST /rollback → old version answers",
        ms(warm_in_process),
        target="for information",
    )
    policy = f"{interval:g} s" if interval is not None else "default"
    out.notes += [
        f"{REPLICAS} replicas, {policy} health-check interval (default "
        f"{HealthPolicy().interval_seconds:g} s). Each mode's raw floor is sampled before and "
        "after every figure of that mode; its baseline is the median of those samples.",
        *[end_to_end_notes(result) for result in modes],
        f"in-process rows: medians over {len(rounds)} round(s), the job run in this process "
        "(`run_job`, SQLite, no broker, no worker): the path without dispatch, for "
        "information. " + steps_breakdown(rounds),
        "in-process " + per_round(rounds),
    ]
    return out


def end_to_end_rows(out: Any, result: Any, warm_in_process: float) -> None:
    """The rows of one mode (``bench.endtoend.ModeResult``)."""
    from bench.common import ms

    mode, raw = result.mode, result.raw()
    out.add(f"{mode}: raw floor ({sum(len(r.raw) for r in result.rounds)} samples)", ms(raw))
    for name, attr in (
        ("promote, replacing: POST /promote → new version answers", "replace"),
        ("cold rollback: POST /rollback → old version answers", "cold"),
    ):
        if not result.has(attr):
            continue
        value = result.figure(attr)
        out.add(
            f"{mode}: {name}",
            ms(value),
            baseline=ms(raw),
            ratio=value / raw,
            target=f"≤ {PROMOTE_TARGET}x",
            met=value / raw <= PROMOTE_TARGET,
        )
    warm = result.figure("warm")
    out.add(
        f"{mode}: warm rollback: POST /rollback → old version answers",
        ms(warm),
        baseline=f"{ms(warm_in_process)} (in-process)",
        ratio=warm / warm_in_process,
        target=f"< {WARM_TARGET_MS:.0f} ms and ≤ {WARM_RATIO_TARGET:g}x",
        met=warm * 1000 < WARM_TARGET_MS and warm / warm_in_process <= WARM_RATIO_TARGET,
    )
    later = result.rounds[1:] or result.rounds
    for name, value in (
        ("promote, first in environment (route created)", result.figure("first", later)),
        ("the worker's first job (a first promote)", result.rounds[0].first.seconds),
    ):
        out.add(
            f"{mode}: {name}",
            ms(value),
            baseline=ms(raw),
            ratio=value / raw,
            target="for information",
        )


def end_to_end_notes(result: Any) -> str:
    """Where one mode's time goes, and its rounds."""
    rounds = "; ".join(
        f"raw {'/'.join(f'{x * 1000:.0f}' for x in r.raw)} first {r.first.seconds * 1000:.0f} "
        f"replace {r.replace.seconds * 1000:.0f} warm {r.warm.seconds * 1000:.0f}"
        + (f" cold {r.cold.seconds * 1000:.0f}" if r.cold else "")
        for r in result.rounds
    )
    return (
        f"{result.mode}: medians over {len(result.rounds)} round(s) (the first-in-environment "
        "row leaves out round 1, the worker's first job); where the time goes (median ms, "
        "job timestamps: api = request → job row, broker = created → claimed, then each "
        "phase, answer = ACTIVE committed → the client saw it, negative when HAProxy served "
        "the new version before the commit): "
        + "; ".join(
            f"{label}: {result.steps(attr)}"
            for label, attr in (("replacing", "replace"), ("warm", "warm"), ("cold", "cold"))
            if result.has(attr)
        )
        + "; the worker's first job: "
        + ", ".join(f"{k} {v * 1000:.0f}" for k, v in result.rounds[0].first.steps.items())
        + f". Per round (ms): {rounds}. Load average (1 min) {result.load[0]:.1f} at the "
        f"start, {result.load[1]:.1f} at the end."
    )


def run(
    quick: bool = False,
    rounds: int | None = None,
    modes: tuple[str, ...] | None = None,
    interval: float | None = None,
) -> Any:
    """In-process rounds, then end-to-end rounds in each mode; the results as a Section."""
    from bench.endtoend import MODES, measure

    count = rounds or (1 if quick else 9)
    # quick (the smoke in make test): one end-to-end mode, the one `shipway up` runs
    chosen = (MODES[:1] if quick else MODES) if modes is None else modes
    engine = docker.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="shipway-bench-"))
    images: list[Image] = []
    try:
        engine.images.get(BASE_IMAGE)
        images = [build_image(engine, "bench-v1"), build_image(engine, "bench-v2")]
        with shipway_in(scratch) as ship:
            results = []
            for index in range(count):
                results.append(one_round(ship, engine, images, interval))
                print(f"round {index + 1}/{count}: {per_round(results[-1:])}", file=sys.stderr)
        per_mode = []
        for mode in chosen:
            per_mode.append(measure(mode, engine, images, count, quick))
            print(f"{mode}: {end_to_end_notes(per_mode[-1])}", file=sys.stderr)
    finally:
        for image in images:
            with suppress(docker.errors.ImageNotFound):
                engine.images.remove(image.tag, force=True)
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return section(results, per_mode, interval)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=None, help="default 9 (quick: 1)")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=None,
        help="health-check interval for the bench deployments (default: shipway's default)",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="end-to-end modes, comma-separated (default embedded,production; quick: embedded)",
    )
    parser.add_argument("--no-worker", action="store_true", help="in-process rounds only")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m) if args.modes else None
    if args.no_worker:
        modes = ()
    return print_section(
        lambda: run(
            quick=args.quick, rounds=args.rounds, modes=modes, interval=args.health_interval
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
