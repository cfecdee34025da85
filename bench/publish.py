"""Publish against a raw ``docker build`` of the same context, in one run.

A static site (an index page carrying a per-round marker, a health page and 40
small assets, about 200 kB) is

- built raw: the same context shipway generates (``site/`` plus the Dockerfile of
  ``builds.context.static_dockerfile``, FROM the base image, with as many labels)
  with the Docker SDK's ``build`` (rm, forcerm, no pull), timed from the files on
  disk to the image id;
- published through shipway: ``POST /deployments/{id}/versions`` with the tar.gz
  (in-process API on a scratch SQLite database), then the publish job run in-process
  with ``run_job`` (no broker latency), timed from the request to the version
  ``ready`` (upload, staging and unpacking, the job's transactions, the build, the
  artifact record).

Each round uses new page content for both, so neither hits the layer cache past
the base image. Medians over rounds; raw and shipway alternate within a round.

    .venv/bin/python -m bench.publish [--quick] [--rounds N]
"""

from __future__ import annotations

import io
import secrets
import shutil
import tarfile
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import docker
import docker.errors

from bench.common import Section, arguments, median, ms, print_section, scratch
from bench.promote import BASE_IMAGE, BENCH_LABEL, shipway_in

TARGET = 1.2
ASSETS = 40
# As many labels as shipway puts on a version's image, so the Dockerfiles match.
RAW_LABELS = {
    BENCH_LABEL: "1",
    "shipway.bench.version": "v",
    "shipway.bench.number": "1",
    "shipway.bench.workspace": "w",
}


def site_files(marker: str) -> dict[str, bytes]:
    """The site: index (with ``marker``), healthz, and small assets."""
    files = {"index.html": f"<h1>{marker}</h1>\n".encode(), "healthz": b"ok\n"}
    for index in range(ASSETS):
        files[f"assets/file{index}.css"] = (f"/* {marker} {index} */\n" + "a{}\n" * 1200).encode()
    return files


def tar_gz(files: dict[str, bytes]) -> bytes:
    """The files as a tar.gz archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def raw_build(engine: docker.DockerClient, files: dict[str, bytes]) -> tuple[float, str]:
    """Seconds of a raw docker build of shipway's static context; and the tag."""
    from shipway.builds.context import static_dockerfile

    context = Path(tempfile.mkdtemp(prefix="swb-build-"))
    tag = f"shipway-bench/raw-publish:{secrets.token_hex(4)}"
    try:
        for name, content in files.items():
            path = context / "site" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        dockerfile = static_dockerfile(base_image=BASE_IMAGE, port=8080, labels=RAW_LABELS)
        (context / "Dockerfile").write_text(dockerfile)
        started = time.perf_counter()
        image_id = None
        for chunk in engine.api.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        elapsed = time.perf_counter() - started
        if image_id is None:
            raise RuntimeError("raw build produced no image")
        return elapsed, tag
    finally:
        shutil.rmtree(context, ignore_errors=True)


def run(quick: bool = False, rounds: int | None = None) -> Section:
    """Publish ``rounds`` times beside as many raw builds; the results as a Section."""
    from shipway.catalog.models import Version
    from shipway.db import session_factory
    from shipway.jobs.runner import run_job

    rounds = rounds or (1 if quick else 5)
    section = Section("publish", "Publish vs raw docker build")
    engine = docker.from_env()
    raw_tags: list[str] = []
    raw_times: list[float] = []
    ship_times: list[float] = []
    try:
        engine.images.get(BASE_IMAGE)
        with scratch("swb-publish-") as folder, shipway_in(folder) as ship:
            response = ship.client.post(
                "/api/v1/deployments",
                json={"name": f"publish-{secrets.token_hex(3)}", "kind": "static"},
                headers=ship.headers(),
            )
            assert response.status_code == 201, response.text
            dep = str(response.json()["id"])
            ship.deployments.append(dep)
            for index in range(rounds + 1):  # round 0 warms both paths, untimed
                raw_s, tag = raw_build(engine, site_files(f"raw-{index}-{secrets.token_hex(4)}"))
                raw_tags.append(tag)
                archive = tar_gz(site_files(f"ship-{index}-{secrets.token_hex(4)}"))
                started = time.perf_counter()
                answer = ship.client.post(
                    f"/api/v1/deployments/{dep}/versions",
                    files={"source": ("site.tar.gz", archive, "application/gzip")},
                    headers=ship.headers(key=True),
                )
                assert answer.status_code == 202, answer.text
                state = run_job(answer.json()["job"]["id"])
                ship_s = time.perf_counter() - started
                with session_factory()() as session:
                    version = session.get(Version, answer.json()["version"]["id"])
                    assert version is not None
                    if state != "succeeded" or version.state != "ready":
                        raise RuntimeError(f"publish {state}: {version.failure_diagnostics}")
                if index:
                    raw_times.append(raw_s)
                    ship_times.append(ship_s)
            for image in engine.images.list(filters={"label": f"shipway.deployment={dep}"}):
                with suppress(docker.errors.APIError):
                    engine.images.remove(image.id, force=True)
    finally:
        for tag in raw_tags:
            with suppress(docker.errors.APIError):
                engine.images.remove(tag, force=True)
        engine.close()
    ratio = median(ship_times) / median(raw_times)
    section.add(
        "publish: request → version ready (median)",
        ms(median(ship_times)),
        baseline=ms(median(raw_times)),
        ratio=ratio,
        target=f"≤ {TARGET}x",
        met=ratio <= TARGET,
    )
    section.notes += [
        f"{rounds} round(s) after one untimed; per round (ms): "
        + "; ".join(
            f"raw {r * 1000:.0f} shipway {s * 1000:.0f}"
            for r, s in zip(raw_times, ship_times, strict=True)
        ),
        f"site: index + healthz + {ASSETS} assets, about "
        f"{sum(len(v) for v in site_files('x').values()) // 1000} kB; the baseline is "
        "`docker build` alone (files already on disk), shipway's figure includes the "
        "upload and unpacking of the archive.",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    return print_section(lambda: run(quick=args.quick, rounds=args.rounds))


if __name__ == "__main__":
    raise SystemExit(main())
