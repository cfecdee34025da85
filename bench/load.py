"""Failed requests during promotes under load: steady traffic through the public route
while versions replace each other.

A 3-replica static site gets v1 promoted; then client threads send GET requests to
its public URL (HAProxy on 127.0.0.1) while v2, v3, v1, v2 … are promoted one after
another (each a new version of one of three images), with shipway's scale-down delay
set to 0 so every replaced release is drained and its containers removed at once —
the hardest case. Half the clients keep connections alive, half open one per request.
A request fails if it errors or times out, answers anything but 200, or answers a
body that is none of the three versions.

    .venv/bin/python -m bench.load [--quick] [--promotes N]
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import httpx

from bench.common import Section, arguments, median, ms, print_section
from bench.promote import BASE_IMAGE, Image, build_image, run_job, set_delay, shipway_in

CLIENTS = 4
PAUSE_SECONDS = 0.01  # per client between requests: bounded load (~CLIENTS / PAUSE rps)


@dataclass
class Traffic:
    """Counts of the client threads."""

    ok: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, reason: str | None) -> None:
        with self.lock:
            if reason is None:
                self.ok += 1
            else:
                self.failed += 1
                self.reasons[reason] += 1


def client(
    url: str, markers: set[str], traffic: Traffic, stop: threading.Event, keep: bool
) -> None:
    """GET ``url`` until ``stop``; every answer is counted ok or failed."""
    session = httpx.Client(timeout=5) if keep else None
    try:
        while not stop.is_set():
            try:
                response = session.get(url) if session is not None else httpx.get(url, timeout=5)
                if response.status_code != 200:
                    traffic.note(f"HTTP {response.status_code}")
                elif response.text.strip() not in markers:
                    traffic.note("unexpected body")
                else:
                    traffic.note(None)
            except httpx.HTTPError as error:
                traffic.note(type(error).__name__)
            stop.wait(PAUSE_SECONDS)
    finally:
        if session is not None:
            session.close()


def run(quick: bool = False, promotes: int | None = None) -> Section:
    """Promote ``promotes`` times under traffic; the results as a Section."""
    count = promotes or (1 if quick else 9)
    section = Section("load", "Failed requests during promotes under load")
    engine = docker.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="shipway-bench-load-"))
    images: list[Image] = []
    traffic = Traffic()
    durations: list[float] = []
    elapsed = 0.0
    try:
        engine.images.get(BASE_IMAGE)
        images = [build_image(engine, f"load-v{n}-{secrets.token_hex(2)}") for n in (1, 2, 3)]
        markers = {image.marker for image in images}
        with shipway_in(scratch) as ship:
            set_delay(0)
            dep = ship.deployment(None)
            run_job(ship.promote(dep, ship.version(dep, images[0]))["job"]["id"])
            url = ship.public_url(dep) + "/"
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=client, args=(url, markers, traffic, stop, n % 2 == 0), daemon=True
                )
                for n in range(CLIENTS)
            ]
            for thread in threads:
                thread.start()
            started = time.perf_counter()
            try:
                time.sleep(1)  # traffic before the first promote
                for index in range(count):
                    image = images[(index + 1) % len(images)]
                    one = time.perf_counter()
                    run_job(ship.promote(dep, ship.version(dep, image))["job"]["id"])
                    durations.append(time.perf_counter() - one)
                time.sleep(1)  # and after the last
            finally:
                stop.set()
                for thread in threads:
                    thread.join(10)
            elapsed = time.perf_counter() - started
    finally:
        for image in images:
            with suppress(docker.errors.ImageNotFound):
                engine.images.remove(image.tag, force=True)
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    total = traffic.ok + traffic.failed
    section.add(
        f"failed requests / requests during {count} promotes",
        f"{traffic.failed} / {total}",
        target="0 failed",
        met=traffic.failed == 0,
    )
    section.add("request rate while promoting", f"{total / elapsed:.0f} req/s")
    section.add(
        "promote request → job done (drain and retire included), median", ms(median(durations))
    )
    if traffic.reasons:
        section.notes.append(
            "failures: " + ", ".join(f"{k} x {v}" for k, v in traffic.reasons.most_common())
        )
    section.notes.append(
        f"{CLIENTS} client threads ({CLIENTS // 2} keep-alive, {CLIENTS - CLIENTS // 2} a new "
        f"connection per request), {PAUSE_SECONDS * 1000:.0f} ms pause between requests; "
        "3 replicas per release; scale-down delay 0 (replaced replicas drained, then "
        "removed within each promote job)."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--promotes", type=int, default=None)
    args = parser.parse_args(argv)
    return print_section(lambda: run(quick=args.quick, promotes=args.promotes))


if __name__ == "__main__":
    raise SystemExit(main())
