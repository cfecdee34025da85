"""Swarm benchmarks: shipway on a real 3-node Docker Swarm with a registry, beside raw Swarm.

Run as root from the repository root (``make bench-cluster``)::

    .venv/bin/python -m bench.swarm                 # prints the section
    .venv/bin/python -m bench.swarm --write         # and puts it into bench/RESULTS.md
    .venv/bin/python -m bench.swarm --quick --rounds 2 --kills 1

It starts the project's cluster harness (``tests.support.cluster.Cluster``: 3 dockerd
nodes in network namespaces, node 1 the manager, a Docker Distribution registry; it
waits for the machine's cluster lock), points an in-process shipway at it
(``SHIPWAY_RUNTIME=swarm``, ``DOCKER_HOST`` = the manager, ``SHIPWAY_REGISTRY`` = the
registry, SQLite, HAProxy in the root namespace) and measures, each beside its raw
baseline in the same run (``bench/swarm_raw.py``):

- publish: ``POST …/versions`` with a static site → publish job (in-process
  ``run_job``, no broker) → version ``ready`` (build on the manager, push, digest
  recorded) vs raw ``docker build`` + ``docker push`` of the same context;
- promote: ``POST …/promote`` of that image (a new deployment, 3 replicas) → job
  run in-process → ACTIVE and the public URL answers through HAProxy, vs raw
  ``docker service create`` of the same image by digest (3 replicas, host-mode port,
  one per node) until each node answers 200. The image is pulled on every node
  before either (untimed), so neither pays the pull; raw and shipway alternate;
- node kill: node 2 killed under an ACTIVE 3-replica release; the router watch runs
  every ``relay_interval_seconds`` in a thread (what ``shipway relay`` runs); seconds
  until all replicas run again and HAProxy routes exactly them, vs the seconds until
  Swarm reports them running (the floor: nothing can route a replica before it
  runs); requests through the public address during and after.

Figures are medians. Everything started is removed at the end (the cluster's
``stop()`` sweeps and verifies). Nothing here asserts a time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, Section, arguments
from bench.promote import BASE_IMAGE, REPLICAS, Shipway, breakdown, run_job, shipway_in
from bench.publish import site_files, tar_gz
from bench.swarm_raw import (
    RAW_LABEL,
    node_id,
    pull_everywhere,
    raw_build_push,
    raw_service,
    raw_services_per_replica,
    raw_watch_service,
    remove_services,
    running_nodes,
)
from bench.swarm_report import KILLED_NODE, Kill, Round, section, write_section
from tests.support.cluster import Cluster


@dataclass
class Lab:
    """The running cluster, the in-process shipway on it, and the publish deployment."""

    cluster: Cluster
    ship: Shipway
    publish_dep: str = ""
    raw_repository: str = ""
    last: tuple[dict[str, Any], str] | None = None  # the newest published image, its marker


# --------------------------------------------------------------------------- shipway side


def publish(lab: Lab, marker: str) -> tuple[float, str]:
    """Seconds from the upload request to the version ``ready``; the version id."""
    from shipway.catalog.models import Version
    from shipway.db import session_factory

    archive = tar_gz(site_files(marker))
    started = time.perf_counter()
    answer = lab.ship.client.post(
        f"/api/v1/deployments/{lab.publish_dep}/versions",
        files={"source": ("site.tar.gz", archive, "application/gzip")},
        headers=lab.ship.headers(key=True),
    )
    assert answer.status_code == 202, answer.text
    run_job(answer.json()["job"]["id"])
    elapsed = time.perf_counter() - started
    with session_factory()() as session:
        version = session.get(Version, answer.json()["version"]["id"])
        assert version is not None and version.state == "ready", version
        assert version.runtime_image and "@sha256:" in version.runtime_image
        return elapsed, version.id


def version_values(version_id: str) -> dict[str, Any]:
    """The columns a publish recorded, to register the same image in another deployment."""
    from shipway.catalog.models import Version
    from shipway.db import session_factory

    with session_factory()() as session:
        version = session.get(Version, version_id)
        assert version is not None
        return {
            "artifact_sha256": version.artifact_sha256,
            "runtime_image": version.runtime_image,
            "runtime_port": version.runtime_port,
            "runtime_command": version.runtime_command,
            "health_check_path": version.health_check_path,
            "artifact_manifest": version.artifact_manifest,
        }


def promote_and_serve(lab: Lab, values: dict[str, Any], marker: str) -> tuple[float, str, str]:
    """A new 3-replica deployment running ``values``' image: seconds from the promote
    request until ACTIVE and its public URL answers ``marker`` through HAProxy; the
    job id and the deployment id."""
    from tests.support.seed import ready_version

    ship = lab.ship
    dep = ship.deployment(None)
    version_id = ready_version(dep, actor="bench", values=values)
    poll = httpx.Client(timeout=2)  # made before the clock starts, as the raw floor's
    with poll:
        started = time.perf_counter()
        body = ship.promote(dep, version_id)
        run_job(body["job"]["id"])
        url = ship.public_url(dep)
        deadline = started + 60
        while True:
            try:
                if marker in poll.get(url + "/").text:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{url} never answered {marker}")
            time.sleep(0.01)
        return time.perf_counter() - started, str(body["job"]["id"]), dep


def created_to_active(job_id: str) -> float:
    from bench.promote import created_to_active as between

    return between(job_id, _release_of(job_id))


# --------------------------------------------------------------------------- rounds


def one_round(lab: Lab, index: int) -> Round:
    """Publish beside a raw build+push, then promote beside a raw service create; the
    side that goes first alternates from round to round."""
    cluster = lab.cluster
    marker = f"swarm-{index}-{secrets.token_hex(4)}"
    raw_files = site_files(f"raw-{index}-{secrets.token_hex(4)}")
    with cluster.client(1, timeout=300) as node1:
        if index % 2:
            ship_s, version_id = publish(lab, marker)
            raw_b, raw_p, _ = raw_build_push(node1, raw_files, lab.raw_repository, f"r{index}")
        else:
            raw_b, raw_p, _ = raw_build_push(node1, raw_files, lab.raw_repository, f"r{index}")
            ship_s, version_id = publish(lab, marker)
    values = version_values(version_id)
    lab.last = (values, marker)
    pull_everywhere(cluster, values["runtime_image"])
    if index % 2:
        promote_s, job_id, dep = promote_and_serve(lab, values, marker)
        raw_s = raw_service(cluster, values["runtime_image"])
        layout_s = raw_services_per_replica(cluster, values["runtime_image"])
    else:
        layout_s = raw_services_per_replica(cluster, values["runtime_image"])
        raw_s = raw_service(cluster, values["runtime_image"])
        promote_s, job_id, dep = promote_and_serve(lab, values, marker)
    remove_services(cluster, f"shipway.deployment={dep}")
    return Round(
        raw_build=raw_b,
        raw_push=raw_p,
        publish=ship_s,
        raw_service=raw_s,
        raw_per_replica=layout_s,
        promote=promote_s,
        created_to_active=created_to_active(job_id),
        steps=breakdown(job_id),
    )


def node_kill(lab: Lab, values: dict[str, Any], marker: str) -> Kill:
    """Kill a node under an ACTIVE 3-replica release and time the recovery."""
    from shipway.config import get_settings
    from shipway.deployments.addresses import route_key
    from shipway.releases.reconcile import watch_router
    from shipway.releases.replicas import RELEASE_LABEL
    from shipway.router.current import router_config
    from shipway.runtime.swarm_runtime import SwarmRuntime
    from tests.support.cluster import ClusterClient

    cluster = lab.cluster
    _, job_id, dep = promote_and_serve(lab, values, marker)
    url = lab.ship.public_url(dep)
    release_id = _release_of(job_id)
    key = route_key(dep, "production")
    lost = cluster.node_address(KILLED_NODE)
    observer = SwarmRuntime(ClusterClient(base_url=cluster.manager_docker_host(), timeout=30))
    placed = {
        r.endpoint.address for r in observer.replicas({RELEASE_LABEL: release_id}) if r.endpoint
    }
    assert lost in placed, f"no replica on node {KILLED_NODE}: {placed}"
    # The floor: a raw service of the same image, watched through the same node loss.
    raw_id = raw_watch_service(cluster, values["runtime_image"])
    lost_id = node_id(cluster, KILLED_NODE)
    assert lost_id in running_nodes(cluster, raw_id), "no raw replica on the node to kill"
    stop = threading.Event()
    sent, failed, took = [0], [0], []

    def relay() -> None:  # the router watch, as `shipway relay` runs it
        interval = get_settings().relay_interval_seconds
        while not stop.wait(interval):
            watch_router()

    def traffic() -> None:  # one client, a request every 50 ms (each waits up to 10 s)
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                sent[0] += 1
                began = time.monotonic()
                if marker not in _body(c, url):
                    failed[0] += 1
                took.append(time.monotonic() - began)
                stop.wait(0.05)

    threads = [threading.Thread(target=fn, daemon=True) for fn in (relay, traffic)]
    started = time.monotonic()
    cluster.kill_node(KILLED_NODE)
    for thread in threads:
        thread.start()
    swarm_at = routed_at = raw_at = None
    try:
        while routed_at is None or raw_at is None:
            if time.monotonic() - started > 180:
                raise RuntimeError("the lost replicas were never running and routed again")
            if raw_at is None:
                nodes = running_nodes(cluster, raw_id)
                if len(nodes) == REPLICAS and lost_id not in nodes:
                    raw_at = time.monotonic() - started
            replicas = observer.replicas({RELEASE_LABEL: release_id})
            endpoints = {(r.endpoint.address, r.endpoint.port) for r in replicas if r.endpoint}
            if (
                len(replicas) == REPLICAS
                and all(r.running for r in replicas)
                and len(endpoints) == REPLICAS
                and lost not in {address for address, _ in endpoints}
            ):
                swarm_at = swarm_at or time.monotonic() - started
                routed = {(s.address, s.port) for s in router_config().servers(key)}
                if routed_at is None and routed == endpoints:
                    routed_at = time.monotonic() - started
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        observer.client.close()
    with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        after = [_body(c, url) for _ in range(200)]
    cluster.restart_node(KILLED_NODE)
    remove_services(cluster, f"shipway.deployment={dep}")
    remove_services(cluster, f"{RAW_LABEL}=watch")
    assert swarm_at is not None
    return Kill(
        raw_running=raw_at,
        swarm_running=swarm_at,
        routed=routed_at,
        failed_during=failed[0],
        sent_during=sent[0],
        slow_during=sum(1 for seconds in took if seconds > 1),
        worst_during=max(took, default=0.0),
        failed_after=sum(1 for body in after if marker not in body),
        sent_after=len(after),
    )


def _release_of(job_id: str) -> str:
    from shipway.db import session_factory
    from shipway.jobs.models import Job

    with session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.release_id
        return str(job.release_id)


def _body(client: httpx.Client, url: str) -> str:
    try:
        return client.get(url + "/").text
    except httpx.HTTPError as error:
        return type(error).__name__


# --------------------------------------------------------------------------- setup


SWARM_ENV = ("SHIPWAY_RUNTIME", "SHIPWAY_REGISTRY", "DOCKER_HOST")


@contextmanager
def lab_on_swarm(folder: Path) -> Iterator[Lab]:
    """A 3-node cluster with the base image in its registry, and shipway pointed at it."""
    from shipway.config import get_settings
    from shipway.runtime import _runtime

    saved = {name: os.environ.get(name) for name in SWARM_ENV}
    with Cluster(nodes=3) as cluster:
        cluster.load_image(BASE_IMAGE)  # node 1 builds FROM it; the registry has its layers
        os.environ.update(
            SHIPWAY_RUNTIME="swarm",
            SHIPWAY_REGISTRY=cluster.registry_address,
            DOCKER_HOST=cluster.manager_docker_host(),
        )
        get_settings.cache_clear()
        _runtime.cache_clear()
        try:
            with shipway_in(folder) as ship:
                lab = Lab(cluster=cluster, ship=ship)
                response = ship.client.post(
                    "/api/v1/deployments",
                    json={"name": f"publish-{secrets.token_hex(3)}", "kind": "static"},
                    headers=ship.headers(),
                )
                assert response.status_code == 201, response.text
                lab.publish_dep = str(response.json()["id"])
                lab.raw_repository = f"{cluster.registry_address}/bench-raw/publish"
                yield lab
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            get_settings.cache_clear()
            _runtime.cache_clear()


def run(quick: bool = False, rounds: int | None = None, kills: int | None = None) -> Section:
    """Start the cluster, measure, remove everything; the results as a Section."""
    count = rounds or (1 if quick else 5)
    kill_count = (1 if quick else 3) if kills is None else kills
    folder = Path(tempfile.mkdtemp(prefix="shipway-bench-swarm-"))
    os.chmod(folder, 0o755)
    results: list[Round] = []
    samples: list[Kill] = []
    try:
        with lab_on_swarm(folder) as lab:
            waited = lab.cluster.timings.get("lock_wait", 0.0)
            one_round(lab, -1)  # untimed: first push of both repositories, first service
            load = list(os.getloadavg())
            for index in range(count):
                results.append(one_round(lab, index))
                print(f"swarm round {index + 1}/{count}: {results[-1]}", file=sys.stderr)
            assert lab.last is not None
            for index in range(kill_count):
                samples.append(node_kill(lab, *lab.last))
                print(f"swarm node kill {index + 1}/{kill_count}: {samples[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = section(results, samples, waited, load)
    out.notes.append(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}.")
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.common import machine

    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 1)")
    parser.add_argument("--kills", type=int, default=None, help="node kills, default 3 (quick: 1)")
    parser.add_argument("--write", action="store_true", help="put the section into RESULTS.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    began = time.perf_counter()
    result = run(quick=args.quick, rounds=args.rounds, kills=args.kills)
    result.seconds = time.perf_counter() - began
    shown = " ".join(["python -m bench.swarm", *(argv if argv is not None else sys.argv[1:])])
    result.notes.insert(0, f"`{shown}`, started {started_at}; machine: {machine()}.")
    text = result.markdown()
    print(text)
    if args.write:
        write_section(text, args.results)
        print(f"bench.swarm: wrote the swarm section of {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
