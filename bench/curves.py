"""Cost curves as work grows (issue 18 item 3): each figure at growing sizes, as a ratio to
its smallest size (or to its raw floor), with one PNG chart per curve.

    .venv/bin/python -m bench.curves [--quick] [--only router,monitor,reads,busy] [--charts DIR]

1. router: a traffic switch (``releases.traffic.switch_traffic``) and a new environment's
   route (``ensure_route``) on routers carrying 10, 100 and 1,000 environments and
   hostnames, taken in turn (as bench/hosts.py); and a promote job run in-process (3
   replicas, job created → ACTIVE) on one shipway whose router carries 10, 100 or 1,000
   other environments, the sizes in turn: the first promote of an environment (its route
   created: a spare, or a reload when the pool is empty) and a replacing one.
2. monitor: one health-monitor pass (``releases.monitor.monitor_once``, in-process) over
   10, 100 and 300 ACTIVE replicas (real busybox httpd containers, 5 per release, made by
   real promote jobs), beside the raw floor of the same work: one container listing and a
   GET of every replica's health path, as many in parallel as the monitor allows.
3. reads: ``GET …/versions`` (first page), ``GET …/versions/{id}`` and ``GET /queue`` on
   databases holding 1,000, 100,000 and 1,000,000 versions and as many finished jobs
   (bench/reads.py's seeding), in-process ASGI; the sizes are taken in turn, request by
   request, so every size sees the same moments of the machine. Ratio to the 1,000 figure.
4. busy: API p50/p99 (a real ``shipway api`` process; PostgreSQL, Redis) while 4 ``shipway
   worker`` processes run no-op jobs flat out (a feeder process keeps their queue full),
   against the same requests while the workers are idle, in alternating blocks.

Charts go beside the results file (``make bench``: bench/curve-*.png); standalone, to
``--charts`` (default bench/, or a temporary folder with ``--quick``).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import secrets
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    ROOT,
    Section,
    arguments,
    in_turn,
    median,
    migrate,
    ms,
    percentile,
    print_section,
    scratch,
    use_settings,
)

CHARTS_ENV = "BENCH_CHARTS"  # where the PNGs go (python -m bench: beside the results file)
FLAT_TARGET = 1.2  # "≈ 1x": within the noise of a shared machine
BUSY_TARGET = 2.0
PER_RELEASE = 5  # replicas per release in the monitor curve
PARTS = ("router", "monitor", "reads", "busy")
FEEDER = "bench-feeder"  # the actor of the busy curve's jobs
PENDING = f"SELECT count(*) FROM jobs WHERE actor = '{FEEDER}' AND state IN ('queued', 'running')"


@dataclass
class Curve:
    """One chart: a figure (ms) per size for each series."""

    name: str
    title: str
    xlabel: str
    sizes: list[int]
    series: dict[str, list[float]] = field(default_factory=dict)
    ylabel: str = "ms"
    log_x: bool = True

    def draw(self, folder: Path) -> Path:
        """Write ``curve-<name>.png`` into ``folder``; its path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"curve-{self.name}.png"
        figure, axes = plt.subplots(figsize=(7, 4.2), dpi=100)
        colors: dict[str, str] = {}  # a p50 and its p99 share a colour; the p99 dashed
        for label, values in self.series.items():
            group = label.removesuffix(" p50").removesuffix(" p99")
            color = colors.setdefault(group, f"C{len(colors)}")
            style = "--" if label.endswith(" p99") else "-"
            axes.plot(self.sizes, values, style, marker="o", color=color, label=label)
        if self.log_x:
            axes.set_xscale("log")
        axes.set_xticks(self.sizes, [f"{size:,}" for size in self.sizes])
        axes.minorticks_off()
        axes.set_ylim(bottom=0)
        axes.set_xlabel(self.xlabel)
        axes.set_ylabel(self.ylabel)
        axes.set_title(self.title)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path)
        plt.close(figure)
        return path


def chart_folder(quick: bool) -> Path:
    """Where this run's charts go."""
    chosen = os.environ.get(CHARTS_ENV)
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / "shipway-bench-charts" if quick else ROOT / "bench"


def add_point(
    section: Section,
    name: str,
    value: float,
    smallest: float,
    *,
    size: str,
    figure: str | None = None,
    target: float | None = FLAT_TARGET,
) -> None:
    """A row: ``value`` at a size beside the smallest size's figure, their ratio."""
    ratio = value / smallest
    section.add(
        name,
        figure or ms(value),
        baseline=f"{ms(smallest)} ({size})",
        ratio=ratio,
        target=f"≈ 1x (≤ {target}x)" if target else "for information",
        met=ratio <= target if target else None,
    )


# ------------------------------------------------------------------- 1. router


def site_image(engine: Any, marker: str) -> Any:
    """A busybox httpd image whose ``/`` answers ``marker`` (as bench/promote.py's), but
    without its ``shipway.bench`` label: the promote bench's clean-up removes every
    container carrying that label, and would remove these in the middle of a curve."""
    from bench.promote import BASE_IMAGE, Image

    files = {
        "Dockerfile": f"FROM {BASE_IMAGE}\nCOPY www/ /srv/www/\nEXPOSE 8080\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]\n',
        "www/index.html": f"{marker}\n",
        "www/healthz": "ok\n",
    }
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = f"shipway-curves/{marker}:{secrets.token_hex(3)}"
    image, _ = engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    return Image(tag=tag, id=image.id, marker=marker)


@contextmanager
def in_process_shipway(folder: Path) -> Iterator[Any]:
    """bench/promote.py's in-process shipway (SQLite, its own HAProxy). Its clean-up is
    run again if a container it listed was gone before it removed it (a replaced replica
    removed by its own promote meanwhile), so nothing is left behind."""
    import docker.errors

    from bench.promote import clean_up, shipway_in

    done = False
    try:
        with shipway_in(folder) as ship:
            yield ship
            done = True
    except docker.errors.APIError:  # 404 gone, or 409 "removal already in progress"
        if not done:
            raise
        clean_up(ship)


def with_others(environments: int, servers: list[int]) -> None:
    """Make the current shipway's router (started) carry ``environments`` other routes and
    hostnames (one server each) besides the bench's own."""
    from shipway.router import Route, Server
    from shipway.router.current import get_router
    from shipway.router.haproxy import HAProxyRouter
    from shipway.router.hosts import WantedHosts

    router = get_router()
    assert isinstance(router, HAProxyRouter)
    keys = [f"other_{i:04d}--production" for i in range(environments)]
    others = {
        Route(key): [Server("r0", "127.0.0.1", servers[i % len(servers)])]
        for i, key in enumerate(keys)
    }
    own = {r: s for r, s in router.desired().items() if not r.key.startswith("other_")}
    router.sync({**own, **others})
    router.hosts.sync(
        WantedHosts(
            routes={f"production.other-{i:04d}.bench.localhost": k for i, k in enumerate(keys)}
        )
    )


def promote_times(ship: Any, images: list[Any]) -> tuple[float, float, float]:
    """A new deployment's first promote and a replacing one (job created → ACTIVE), and the
    replacing promote's switch phase (seconds)."""
    from bench.promote import breakdown, created_to_active, run_job

    dep = ship.deployment(None)
    first, second = (ship.version(dep, image) for image in images)
    times = []
    for version_id in (first, second):
        body = ship.promote(dep, version_id)
        run_job(body["job"]["id"])
        times.append(created_to_active(body["job"]["id"], body["release"]["id"]))
    switch = breakdown(body["job"]["id"])["switch"]
    return times[0], times[1], switch


def new_route_times(routers: list[Any], rounds: int) -> list[list[float]]:
    """Seconds to give a new environment its route (``ensure_route``: a spare, or a reload
    when the pool is empty), one on each router in turn (the order rotated every round)."""
    from shipway.router import Route

    times: list[list[float]] = [[] for _ in routers]
    for n in range(rounds):
        for router, measured in in_turn(list(zip(routers, times, strict=True)), n):
            started = time.perf_counter()
            router.ensure_route(Route(f"new_{n:04d}--production"))
            measured.append(time.perf_counter() - started)
    return times


def router_curve(section: Section, quick: bool) -> list[Curve]:
    """Switch and promote time vs environments on the router."""
    import docker

    from bench.hosts import router_with, switch_times
    from bench.promote import BASE_IMAGE, Image
    from tests.support.port_servers import PortServers

    sizes = [10, 20] if quick else [10, 100, 1000]
    rounds = 3 if quick else 90  # a multiple of the sizes: each is first equally often
    promotes = 1 if quick else 4
    backends = PortServers(20)
    engine = docker.from_env()
    images: list[Image] = []
    try:
        with ExitStack() as stack:
            routers = [
                stack.enter_context(router_with(size, backends, port_low=33000 + 2000 * index))
                for index, size in enumerate(sizes)
            ]
            switches = [median(times) for times in switch_times(routers, backends, rounds)]
            before = [r.process.master.status().reloads for r in routers]
            created = new_route_times(routers, 6 if quick else 30)
            after = [r.process.master.status().reloads for r in routers]
            reloads = [n - m for n, m in zip(after, before, strict=True)]
        engine.images.get(BASE_IMAGE)
        images = [site_image(engine, "curve-v1"), site_image(engine, "curve-v2")]
        low = 40000 + 100 * secrets.randbelow(50)
        os.environ["SHIPWAY_ROUTER_PORT_RANGE"] = f"{low}-{low + max(sizes) + 200}"
        with scratch("swb-curves-router-") as folder, in_process_shipway(folder) as ship:
            with_others(sizes[0], backends.ports)
            if not quick:  # untimed: the first promote pays imports and first calls
                promote_times(ship, images)
            samples: list[list[tuple[float, float, float]]] = [[] for _ in sizes]
            for _ in range(promotes):  # the containers and HAProxy are removed at the end
                for index, size in enumerate(sizes):  # in turn: a busy moment hits each alike
                    with_others(size, backends.ports)
                    samples[index].append(promote_times(ship, images))
            first = [median([s[0] for s in per_size]) for per_size in samples]
            replacing = [median([s[1] for s in per_size]) for per_size in samples]
            switch_phase = [median([s[2] for s in per_size]) for per_size in samples]
    finally:
        os.environ.pop("SHIPWAY_ROUTER_PORT_RANGE", None)
        backends.close()
        for image in images:
            with suppress(docker.errors.ImageNotFound):
                engine.images.remove(image.tag, force=True)
        engine.close()
    small = f"{sizes[0]} environments"
    for index, size in enumerate(sizes[1:], start=1):
        add_point(
            section,
            f"traffic switch, {size} environments",
            switches[index],
            switches[0],
            size=small,
        )
    for index, size in enumerate(sizes[1:], start=1):
        add_point(
            section,
            f"route for a new environment (ensure_route), {size} environments",
            median(created[index]),
            median(created[0]),
            size=small,
        )
    for index, size in enumerate(sizes[1:], start=1):
        add_point(
            section,
            f"promote to ACTIVE, first in environment, {size} environments",
            first[index],
            first[0],
            size=small,
        )
        add_point(
            section,
            f"promote to ACTIVE, replacing, {size} environments",
            replacing[index],
            replacing[0],
            size=small,
        )
        add_point(
            section,
            f"promote's switch phase, {size} environments",
            switch_phase[index],
            switch_phase[0],
            size=small,
            target=None,
        )
    section.notes.append(
        f"router: median of {rounds} switches per size, the routers switched in turn (the order "
        "rotated every round); "
        f"promotes: {promotes} per size (a new deployment each, 3 replicas, in-process "
        "`run_job`), the sizes in turn (the router's other environments added or removed "
        "before each promote); promote per size (ms): first "
        + "/".join(f"{v * 1000:.0f}" for v in first)
        + ", replacing "
        + "/".join(f"{v * 1000:.0f}" for v in replacing)
        + f" for {'/'.join(map(str, sizes))} environments. New routes: {len(created[0])} per "
        "size, in turn; median (ms) "
        + "/".join(f"{median(t) * 1000:.1f}" for t in created)
        + ", slowest "
        + "/".join(f"{max(t) * 1000:.0f}" for t in created)
        + ", HAProxy reloads among them "
        + "/".join(map(str, reloads))
        + "."
    )
    return [
        Curve(
            "switch",
            "Traffic switch vs environments on the router",
            "environments on the router",
            sizes,
            {"switch_traffic": [v * 1000 for v in switches]},
        ),
        Curve(
            "promote",
            "Promote (job created → ACTIVE, 3 replicas) vs environments",
            "environments on the router",
            sizes,
            {
                "first promote (route created)": [v * 1000 for v in first],
                "replacing promote": [v * 1000 for v in replacing],
                "replacing: switch phase": [v * 1000 for v in switch_phase],
                "new route (ensure_route)": [median(t) * 1000 for t in created],
            },
        ),
    ]


# ------------------------------------------------------------------- 2. monitor


def new_deployment(ship: Any, replicas: int) -> str:
    """A deployment as bench/promote.py makes them (/healthz checked), of ``replicas``."""
    from sqlalchemy import update

    from shipway.catalog.models import Deployment
    from shipway.db import transaction

    dep = str(ship.deployment(None))
    with transaction() as session:
        session.execute(update(Deployment).where(Deployment.id == dep).values(replicas=replicas))
    return dep


def activate(ship: Any, image: Any, releases: int, replicas: int) -> None:
    """``releases`` new ACTIVE releases of ``replicas`` each, by real promote jobs (4 at once)."""
    from bench.promote import run_job

    jobs = []
    for _ in range(releases):
        dep = new_deployment(ship, replicas)
        jobs.append(ship.promote(dep, ship.version(dep, image))["job"]["id"])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run_job, jobs))


def monitor_pass(expected: int) -> float:
    """Seconds of one health-monitor pass over every release (all made due first)."""
    from sqlalchemy import update

    from shipway.catalog.models import Release
    from shipway.db import transaction
    from shipway.releases.monitor import monitor_once

    with transaction() as session:
        session.execute(update(Release).values(health_checked_at=None))
    started = time.perf_counter()
    report = monitor_once()
    elapsed = time.perf_counter() - started
    assert report.probed == expected and not report.unhealthy, report
    return elapsed


def raw_pass(engine: Any, image_tag: str, parallel: int, expected: int) -> float:
    """Seconds of the raw floor: list the containers once, GET every /healthz (in parallel)."""
    poll = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
    started = time.perf_counter()
    summaries = engine.api.containers(filters={"ancestor": image_tag})
    urls = [  # one published port per container (the engine may list it per address)
        f"http://127.0.0.1:{ports[0]}/healthz"
        for summary in summaries
        if (ports := [p["PublicPort"] for p in summary["Ports"] if p.get("PublicPort")])
    ]

    def get(url: str) -> bool:
        return poll.get(url).status_code == 200

    with poll, ThreadPoolExecutor(max(1, min(parallel, len(urls)))) as pool:
        answers = list(pool.map(get, urls))
    elapsed = time.perf_counter() - started
    assert len(answers) == expected and all(answers), (len(answers), expected)
    return elapsed


def monitor_curve(section: Section, quick: bool) -> list[Curve]:
    """Health-monitor pass time vs ACTIVE replicas, beside the raw floor."""
    import docker

    from bench.promote import BASE_IMAGE
    from shipway.config import get_settings

    per = 1 if quick else PER_RELEASE
    sizes = [2, 4] if quick else [10, 100, 300]
    rounds = 2 if quick else 7
    engine = docker.from_env()
    engine.images.get(BASE_IMAGE)
    image = site_image(engine, "curve-monitor")
    ours: list[float] = []
    raw: list[float] = []
    made_seconds: list[float] = []
    try:
        with scratch("swb-curves-monitor-") as folder, in_process_shipway(folder) as ship:
            parallel = get_settings().monitor_max_parallel_probes
            made = 0
            for size in sizes:  # the containers and HAProxy are removed at the end
                started = time.perf_counter()
                activate(ship, image, (size - made) // per, per)
                made_seconds.append(time.perf_counter() - started)
                made = size
                monitor_pass(size // per)  # untimed: the first pass pays its imports
                samples = []
                for _ in range(rounds):  # in turn, so both see the same moments
                    samples.append(
                        (monitor_pass(size // per), raw_pass(engine, image.tag, parallel, size))
                    )
                ours.append(median([s[0] for s in samples]))
                raw.append(median([s[1] for s in samples]))
    finally:
        with suppress(docker.errors.ImageNotFound):
            engine.images.remove(image.tag, force=True)
        engine.close()
    for size, value, floor in zip(sizes, ours, raw, strict=True):
        section.add(
            f"health-monitor pass, {size} ACTIVE replicas ({size // per} releases)",
            ms(value),
            baseline=f"{ms(floor)} (raw: list + GET each)",
            ratio=value / floor,
            target="for information",
        )
    add_point(
        section,
        f"health-monitor pass per replica, {sizes[-1]} vs {sizes[0]} replicas",
        ours[-1] / sizes[-1],
        ours[0] / sizes[0],
        size=f"{sizes[0]} replicas",
        figure=ms(ours[-1] / sizes[-1]),
    )
    section.notes.append(
        f"monitor: median of {rounds} passes per size, each beside a raw pass; {per} replicas "
        f"per release, at most {parallel} probes at once (SHIPWAY_MONITOR_MAX_PARALLEL_PROBES); "
        "made by real promotes in " + "/".join(f"{s:.0f}" for s in made_seconds) + " s."
    )
    return [
        Curve(
            "monitor",
            "Health-monitor pass vs ACTIVE replicas",
            "ACTIVE replicas (real containers)",
            sizes,
            {
                "monitor_once": [v * 1000 for v in ours],
                "raw: list + GET each": [v * 1000 for v in raw],
            },
        )
    ]


# ------------------------------------------------------------------- 3. reads


@dataclass
class Database:
    """One seeded database of the reads curve and what its requests need."""

    size: int
    url: str
    headers: dict[str, str]
    deployment: str
    version: str


def point_at(url: str) -> None:
    """Make the in-process app use the database at ``url`` from its next request on."""
    from shipway.config import get_settings

    os.environ["SHIPWAY_DATABASE_URL"] = url
    get_settings.cache_clear()


def reads_curve(section: Section, quick: bool) -> list[Curve]:
    """API p50/p99 vs table size, each backend."""
    curves = []
    for backend in ("sqlite",) if quick else ("postgresql", "sqlite"):
        curves.append(reads_on(section, backend, quick))
    section.notes.append(
        "reads: per size, a database seeded as bench/reads.py does (versions: one big "
        "deployment and 10 of 1 %; as many finished jobs, one a second); the sizes "
        "in turn, request by request (untimed switch of database between requests); "
        "p50 / p99, ratio of p50 to the smallest size's p50."
    )
    return curves


def reads_on(section: Section, backend: str, quick: bool) -> Curve:
    from fastapi.testclient import TestClient

    from bench.reads import seed, workspace_headers
    from shipway.api import create_app
    from shipway.db import engine_for
    from tests.support.services import start_postgres

    sizes = [1_000, 2_000] if quick else [1_000, 100_000, 1_000_000]
    requests = 10 if quick else 200
    label = "PostgreSQL" if backend == "postgresql" else "SQLite"
    with scratch(f"swb-curves-reads-{backend}-") as folder, ExitStack() as stack:
        if backend == "postgresql":
            import psycopg

            postgres = start_postgres(folder / "pg")
            stack.callback(postgres.stop, "immediate")
            with psycopg.connect(postgres.url().replace("+psycopg", ""), autocommit=True) as conn:
                for size in sizes:
                    conn.execute(f"CREATE DATABASE size{size}")
            urls = [postgres.url(f"size{size}") for size in sizes]
        else:
            urls = [f"sqlite:///{folder / f'size{size}.db'}" for size in sizes]
        use_settings(
            {
                "SHIPWAY_DATABASE_URL": urls[0],
                "SHIPWAY_DATA_DIR": str(folder / "data"),
                "SHIPWAY_ROUTER_DIR": str(folder / "router"),
                "SHIPWAY_BROKER_URL": "",
            }
        )
        databases = []
        client = stack.enter_context(TestClient(create_app(), raise_server_exceptions=True))
        for size, url in zip(sizes, urls, strict=True):
            point_at(url)
            migrate(url)
            engine = engine_for(url)
            stack.callback(engine.dispose)
            _, headers = workspace_headers("bench")
            seeded = seed(engine, client, headers, size, size)
            version = f"vb_{seeded.big_versions // 2}"
            databases.append(Database(size, url, headers, seeded.big, version))
        cases: dict[str, Callable[[Database], str]] = {
            "list versions": lambda d: f"/api/v1/deployments/{d.deployment}/versions",
            "get version": lambda d: f"/api/v1/deployments/{d.deployment}/versions/{d.version}",
            "queue view": lambda d: "/api/v1/queue",
        }
        times: dict[tuple[str, int], list[float]] = {
            (case, db.size): [] for case in cases for db in databases
        }
        for index in range(requests + 5):
            for db in databases:
                point_at(db.url)
                for case, path in cases.items():
                    started = time.perf_counter()
                    response = client.get(path(db), headers=db.headers)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    if index >= 5:
                        times[(case, db.size)].append(elapsed)
    curve = Curve(
        f"reads-{backend}",
        f"API reads vs table size ({label}), p50 and p99",
        "versions (and finished jobs) in the database",
        sizes,
    )
    for case in cases:
        p50 = [median(times[(case, size)]) for size in sizes]
        p99 = [percentile(times[(case, size)], 99) for size in sizes]
        curve.series[f"{case} p50"] = [v * 1000 for v in p50]
        curve.series[f"{case} p99"] = [v * 1000 for v in p99]
        for index, size in enumerate(sizes[1:], start=1):
            add_point(
                section,
                f"{label}: {case}, {size:,} rows, p50 / p99",
                p50[index],
                p50[0],
                size=f"{sizes[0]:,} rows, p99 {ms(p99[0])}",
                figure=f"{ms(p50[index])} / {ms(p99[index])}",
            )
    return curve


# ------------------------------------------------------------------- 4. busy


def feed(settings: dict[str, str], workspace_id: str, backlog: int, go: Any, stop: Any) -> None:
    """(A process of its own.) While ``go`` is set, keep ``backlog`` no-op jobs queued or
    running: enqueue and dispatch as the API does whenever fewer are."""
    from sqlalchemy import text

    use_settings(settings)
    from shipway.bootstrap import load_features
    from shipway.db import get_engine, transaction
    from shipway.jobs import queueing
    from shipway.jobs.dispatch import Queued, dispatch
    from workers.celery_app import send_job

    load_features(sender=send_job)
    pending = text(PENDING)
    while not stop.is_set():
        if not go.wait(0.05):
            continue
        with get_engine().connect() as conn:
            missing = backlog - conn.execute(pending).scalar_one()
        if missing < backlog // 2:
            time.sleep(0.005)
            continue
        with transaction() as session:
            jobs = [
                Queued.of(
                    queueing.enqueue(
                        session,
                        workspace_id=workspace_id,
                        kind="noop",
                        actor=FEEDER,
                        params={"seconds": 0},
                    )
                )
                for _ in range(missing)
            ]
        dispatch(jobs)


def count(sql: str) -> int:
    from sqlalchemy import text

    from shipway.db import get_engine

    with get_engine().connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def finished_jobs() -> int:
    """The feeder's jobs done so far."""
    return count(f"SELECT count(*) FROM jobs WHERE actor = '{FEEDER}' AND state = 'succeeded'")


def backlog_empty() -> bool:
    """Whether the feeder's jobs have all ended."""
    return count(PENDING) == 0


def spare_cpus() -> str | None:
    """Every CPU this process may use but the first, as ``--cpus`` takes them; None with
    one CPU."""
    from workers.cpus import format_cpu_list

    cpus = sorted(os.sched_getaffinity(0))
    return format_cpu_list(set(cpus[1:])) if len(cpus) > 1 else None


@dataclass
class BusyTimes:
    """One placement's request times (per path, idle and busy) and the workers' rate."""

    times: dict[tuple[str, str], list[float]]
    jobs_per_second: float


def busy_blocks(
    http: httpx.Client,
    headers: dict[str, str],
    paths: dict[str, str],
    go: Any,
    *,
    workers: int,
    blocks: int,
    per_block: int,
) -> BusyTimes:
    """Idle and busy blocks in turn: each path ``per_block`` times per block, the workers
    idle (backlog empty), then flat out (the feeder's jobs flowing)."""
    from tests.support.processes import wait_until

    times: dict[tuple[str, str], list[float]] = {
        (case, mode): [] for case in paths for mode in ("idle", "busy")
    }
    busy_seconds, busy_jobs = 0.0, 0
    for case in paths:  # warm-up, untimed
        http.get(paths[case], headers=headers).raise_for_status()
    for _ in range(blocks):
        for mode in ("idle", "busy"):
            if mode == "busy":
                go.set()
                flowing = finished_jobs() + 4 * workers
                wait_until(
                    lambda: finished_jobs() > flowing,  # noqa: B023 (called here)
                    timeout=60,
                    interval=0.05,
                    message="the workers run no jobs",
                )
                done_at, started = finished_jobs(), time.perf_counter()
            else:
                go.clear()
                wait_until(backlog_empty, timeout=120, interval=0.05)
            for _ in range(per_block):
                for case, path in paths.items():
                    began = time.perf_counter()
                    http.get(path, headers=headers).raise_for_status()
                    times[(case, mode)].append(time.perf_counter() - began)
            if mode == "busy":
                busy_seconds += time.perf_counter() - started
                busy_jobs += finished_jobs() - done_at
    go.clear()
    wait_until(backlog_empty, timeout=120, interval=0.05)
    return BusyTimes(times, busy_jobs / busy_seconds)


def busy_curve(section: Section, quick: bool) -> list[Curve]:
    """API p50/p99 while worker processes run no-op jobs flat out, vs idle: the workers on
    any CPU, then (with two CPUs or more) kept off the first one by ``--cpus``."""
    from bench.dispatch import Bench
    from bench.reads import seed, workspace_headers
    from shipway.db import get_engine
    from tests.support.processes import child_env, executable
    from tests.support.services import free_port
    from workers.cpus import parse_cpu_list

    workers = 1 if quick else 4
    blocks = 1 if quick else 6
    per_block = 5 if quick else 50
    pinned = spare_cpus()
    placements: list[str | None] = [None, pinned] if pinned else [None]
    context = multiprocessing.get_context("spawn")
    go, stop = context.Event(), context.Event()
    results: dict[str | None, BusyTimes] = {}
    with scratch("swb-curves-busy-") as folder:
        bench = Bench(folder)
        feeder = None
        try:
            port = free_port()
            api = bench.supervisor.spawn(
                "api",
                [executable("shipway"), "api", "--host", "127.0.0.1", "--port", str(port)],
                env=child_env(bench.settings),
            )
            api.wait_for_log("Application startup complete", timeout=60)
            _, headers = workspace_headers("bench")
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            with http:
                seeded = seed(
                    get_engine(), http, headers, *((1_000, 100) if quick else (10_000, 1_000))
                )
                feeder = context.Process(
                    target=feed,
                    args=(bench.settings, bench.workspace_id, 8 * workers, go, stop),
                    daemon=True,
                )
                feeder.start()
                paths = {
                    "list versions": f"/api/v1/deployments/{seeded.big}/versions",
                    "get version": f"/api/v1/deployments/{seeded.big}/versions/"
                    f"vb_{seeded.big_versions // 2}",
                    "queue view": "/api/v1/queue",
                }
                anywhere = os.sched_getaffinity(0)
                assert feeder.pid is not None  # started: never pin this process instead
                for placement in placements:
                    # The feeder is the load tool: it goes with the workers, as wrk would be
                    # kept off the CPUs of what it measures.
                    os.sched_setaffinity(
                        feeder.pid, parse_cpu_list(placement) if placement else anywhere
                    )
                    started = [bench.worker(1, cpus=placement) for _ in range(workers)]
                    results[placement] = busy_blocks(
                        http,
                        headers,
                        paths,
                        go,
                        workers=workers,
                        blocks=blocks,
                        per_block=per_block,
                    )
                    for service in started:
                        service.stop()
        finally:
            stop.set()
            if feeder is not None:
                feeder.join(10)
                if feeder.is_alive():
                    feeder.kill()
            bench.close()
    series: dict[str, list[float]] = {}
    for placement, result in results.items():
        where = f"on CPUs {placement} (--cpus)" if placement else "on any CPU"
        judged = placement is not None or pinned is None  # any CPU is information beside --cpus
        for case in paths:
            idle, busy = result.times[(case, "idle")], result.times[(case, "busy")]
            ratio = percentile(busy, 99) / percentile(idle, 99)
            section.add(
                f"API {case} while {workers} workers {where} run jobs flat out, p50 / p99",
                f"{ms(median(busy))} / {ms(percentile(busy, 99))}",
                baseline=f"{ms(median(idle))} / {ms(percentile(idle, 99))} (workers idle)",
                ratio=ratio,
                target=f"p99 ≤ {BUSY_TARGET:g}x"
                if judged
                else "info: the workers share the API's CPU",
                met=ratio <= BUSY_TARGET if judged else None,
            )
            series[f"{case} p99, workers {where}"] = [
                percentile(idle, 99) * 1000,
                percentile(busy, 99) * 1000,
            ]
    rates = ", ".join(
        f"{result.jobs_per_second:.0f} jobs/s on {f'CPUs {placement}' if placement else 'any CPU'}"
        for placement, result in results.items()
    )
    section.notes.append(
        f"busy: a real `shipway api` process (PostgreSQL, Redis) and {workers} `shipway worker` "
        "processes (--concurrency 1 each), started on any CPU, then again kept off the first "
        "CPU with `--cpus`, the feeder (the load tool) beside them (the API, PostgreSQL and "
        f"Redis still run anywhere); a feeder process keeps {8 * workers} no-op jobs queued "
        "or running while busy "
        f"({rates} done while measuring); {blocks} idle and {blocks} busy blocks in turn per "
        f"placement, {per_block} requests of each kind per block; ratio = p99 busy / p99 "
        "idle of the same placement. Why the workers' priority (nice) does not do what "
        "`--cpus` does: bench/README.md."
    )
    return [
        Curve(
            "busy",
            f"API p99 with {workers} workers idle (0 jobs/s) and flat out",
            "jobs/s done by the workers",
            [0, round(max(result.jobs_per_second for result in results.values()))],
            series,
            log_x=False,
        )
    ]


# ------------------------------------------------------------------- run


CURVES: dict[str, Callable[[Section, bool], list[Curve]]] = {
    "router": router_curve,
    "monitor": monitor_curve,
    "reads": reads_curve,
    "busy": busy_curve,
}


def run(quick: bool = False, parts: tuple[str, ...] = PARTS) -> Section:
    """Measure each curve; its rows, notes and chart links in one Section. A curve that
    fails is reported (the section fails) and the others still run."""
    section = Section("curves", "Cost curves as work grows")
    folder = chart_folder(quick)
    errors = []
    for part in parts:
        started = time.perf_counter()
        try:
            curves = CURVES[part](section, quick)
        except Exception:
            errors.append(f"{part}:\n{traceback.format_exc()[-3000:]}")
            continue
        links = []
        for curve in curves:
            path = curve.draw(folder)
            links.append(f"![{curve.title}]({path.name})")
        section.notes.append(
            f"{part} ({time.perf_counter() - started:.0f} s): charts " + " ".join(links)
        )
    if errors:
        section.error = "\n".join(errors)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated of {', '.join(PARTS)}")
    parser.add_argument("--charts", type=Path, default=None, help="folder of the PNGs")
    args = parser.parse_args(argv)
    if args.charts:
        os.environ[CHARTS_ENV] = str(args.charts)
    parts = tuple(p.strip() for p in args.only.split(",") if p.strip()) or PARTS
    return print_section(lambda: run(quick=args.quick, parts=parts))


if __name__ == "__main__":
    raise SystemExit(main())
