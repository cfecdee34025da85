"""Failed requests and throughput under real load (wrk) during every kind of rollout.

A 3-replica static site behind shipway's HAProxy (on 127.0.0.1) is driven by **wrk**
(Debian's package; one thread, a few connections, a Lua script that checks every answer):

1. the highest rate the same HAProxy and replicas carry with no rollout (wrk unthrottled);
2. then, paced at ``LOAD_SHARE`` of that rate (the Lua ``delay()`` gives each request the
   next slot of a fixed schedule, so a connection that fell behind catches up), one wrk
   run around each rollout: a promote (scale-down delay 0: the replaced replicas are
   drained and removed within the job), a cold rollback (the old release's replicas
   are gone), a warm rollback (still running: delay 300 s) and a canary (two steps, then
   the switch).

A request fails if wrk counts a socket error (connect, read, write, timeout) or the Lua
``response()`` sees a status other than 200 or a body that is none of the site's
versions. Throughput during a rollout counts the answers wrk received from the rollout
request until the job ended (at least a second), in 100 ms buckets the Lua script keeps
by wall clock; it is compared with the offered (paced) rate. The jobs run in this process
(``run_job`` in a thread, as bench/promote.py's in-process rows), so the only broker
latency is none; what is measured is the traffic path during the switch.

    .venv/bin/python -m bench.load [--quick]
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench.common import Section, arguments, ms, print_section
from bench.promote import (
    BASE_IMAGE,
    Image,
    Shipway,
    build_image,
    run_job,
    set_delay,
    shipway_in,
)

CONNECTIONS = 8
LOAD_SHARE = 0.55  # of the highest rate: the brief asks for at least half of it
THROUGHPUT_TARGET = 0.9
CANARY = {
    "type": "canary",
    "steps": [{"weight": 25, "pause_seconds": 1}, {"weight": 50, "pause_seconds": 1}],
    "analysis": {"interval_seconds": 0.5, "min_requests": 10, "max_error_rate": 0.01},
}

LUA = r"""
-- shipway bench: pacing (WRK_RATE requests/s, 0 = unthrottled), answer checks, and
-- answers per 100 ms of wall clock, written by done() to WRK_OUT.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } sw_timespec;
int clock_gettime(int clk_id, sw_timespec *tp);
]]
local ts = ffi.new("sw_timespec")
local function now()
  ffi.C.clock_gettime(0, ts)  -- CLOCK_REALTIME, as Python's time.time()
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local rate = tonumber(os.getenv("WRK_RATE") or "0")
local markers = {}
for m in string.gmatch(os.getenv("WRK_MARKERS") or "", "[^,]+") do markers[m] = true end
local threads = {}
ok, failed, buckets, fbuckets, reasons = 0, 0, {}, {}, {}
local next_at = nil

function setup(thread) table.insert(threads, thread) end

if rate > 0 then
  function delay()  -- the next free slot of the schedule; at most 0.2 s of catching up
    local t = now()
    if next_at == nil or next_at < t - 0.2 then next_at = t end
    local at = next_at
    next_at = next_at + 1 / rate
    return math.max(0, (at - t) * 1000)
  end
end

function response(status, headers, body)
  local b = math.floor(now() * 10)
  buckets[b] = (buckets[b] or 0) + 1  -- flat tables: wrk's thread:get() copies one level
  local reason = nil
  if status ~= 200 then
    reason = "HTTP " .. status
  elseif not markers[string.gsub(body or "", "%s+$", "")] then
    reason = "unexpected body"
  end
  if reason then
    failed = failed + 1
    fbuckets[b] = (fbuckets[b] or 0) + 1
    reasons[reason] = (reasons[reason] or 0) + 1
  else
    ok = ok + 1
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_OUT"), "w")
  local e = summary.errors
  out:write(string.format("summary %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  out:write(string.format("latency %d %d %d\n", latency:percentile(50),
    latency:percentile(99), latency.max))
  for _, t in ipairs(threads) do
    out:write(string.format("counts %d %d\n", t:get("ok"), t:get("failed")))
    for k, v in pairs(t:get("reasons")) do out:write("reason ", v, " ", k, "\n") end
    for k, v in pairs(t:get("buckets")) do
      out:write(string.format("bucket %d %d\n", k, v))
    end
    for k, v in pairs(t:get("fbuckets")) do
      out:write(string.format("failed %d %d\n", k, v))
    end
  end
  out:close()
end
"""


@dataclass
class WrkRun:
    """What one wrk run counted."""

    requests: int = 0
    seconds: float = 0.0
    ok: int = 0
    answered_failed: int = 0  # a status other than 200, or a wrong body (Lua)
    socket_errors: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    latency_us: tuple[int, int, int] = (0, 0, 0)  # p50, p99, max
    buckets: Counter[int] = field(default_factory=Counter)  # 100 ms of wall clock → answers
    failed_buckets: Counter[int] = field(default_factory=Counter)  # … → failed answers

    @property
    def failed(self) -> int:
        """Failed requests: wrong answers plus socket errors."""
        return self.answered_failed + sum(self.socket_errors.values())

    @property
    def rate(self) -> float:
        """Requests per second over the whole run."""
        return self.requests / self.seconds if self.seconds else 0.0

    def rate_between(self, start: float, end: float) -> float:
        """Answers per second received between two wall-clock times (whole buckets)."""
        first, last = math.floor(start * 10), math.ceil(end * 10)
        return sum(self.buckets[b] for b in range(first, last)) / ((last - first) / 10)

    @classmethod
    def parse(cls, text: str) -> WrkRun:
        """Read the file the Lua ``done()`` wrote."""
        run = cls()
        for line in text.splitlines():
            kind, _, rest = line.partition(" ")
            values = rest.split(" ")
            if kind == "summary":
                numbers = [int(v) for v in values]
                run.requests, run.seconds = numbers[0], numbers[1] / 1e6
                connect, read, write, _status, timeout = numbers[2:7]
                run.socket_errors.update(
                    {"connect": connect, "read": read, "write": write, "timeout": timeout}
                )
            elif kind == "latency":
                p50, p99, worst = (int(v) for v in values)
                run.latency_us = (p50, p99, worst)
            elif kind == "counts":
                run.ok += int(values[0])
                run.answered_failed += int(values[1])
            elif kind == "reason":
                run.reasons[rest.partition(" ")[2]] += int(values[0])
            elif kind == "bucket":
                run.buckets[int(values[0])] += int(values[1])
            elif kind == "failed":
                run.failed_buckets[int(values[0])] += int(values[1])
        run.socket_errors = +run.socket_errors  # drop the zeros
        return run


class Wrk:
    """wrk against one URL: a timed run, or one started and stopped (SIGINT) around work."""

    def __init__(self, folder: Path, url: str, markers: set[str]) -> None:
        self.folder, self.url, self.markers = folder, url, markers
        self.script = folder / "bench.lua"
        self.script.write_text(LUA)
        self.runs = 0

    def _start(self, rate: float, duration: float) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        out = self.folder / f"wrk-{self.runs}.out"
        env = {
            **os.environ,
            "WRK_RATE": f"{rate:.3f}",
            "WRK_MARKERS": ",".join(sorted(self.markers)),
            "WRK_OUT": str(out),
        }
        args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration:.0f}s", "--timeout", "5s"]
        process = subprocess.Popen(
            [*args, "-s", str(self.script), self.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return process, out

    @staticmethod
    def _finish(process: subprocess.Popen[bytes], out: Path) -> WrkRun:
        try:
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if not out.exists():
            raise RuntimeError(f"wrk wrote no results ({process.returncode}): {stderr!r}")
        return WrkRun.parse(out.read_text())

    def timed(self, seconds: float, rate: float = 0.0) -> WrkRun:
        """A run of ``seconds`` (whole seconds: wrk's unit)."""
        return self._finish(*self._start(rate, seconds))

    @contextmanager
    def around(self, rate: float) -> Iterator[list[WrkRun]]:
        """Paced traffic for the duration of the ``with`` block; its counts after it."""
        process, out = self._start(rate, 3600)
        results: list[WrkRun] = []
        try:
            yield results
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # wrk stops, reports and calls done()
            results.append(self._finish(process, out))


@dataclass
class Scenario:
    """One rollout under paced traffic."""

    name: str
    run: WrkRun
    offered: float  # requests/s asked for
    steady: float  # requests/s received in the second before the rollout
    during: float  # requests/s received from the request until the job ended
    seconds: float  # request → job ended
    start: float = 0.0  # wall clock of the rollout request
    containers: list[str] = field(default_factory=list)  # engine events, when some failed

    def failure_window(self) -> str:
        """When failed answers came, in seconds from the rollout request."""
        failed = sorted(self.run.failed_buckets)
        if not failed:
            return "no failed answer (socket errors only)"
        first, last = (b / 10 - self.start for b in (failed[0], failed[-1]))
        return f"failed answers from {first:+.1f} s to {last:+.1f} s after the request"


def under_load(
    wrk: Wrk, rate: float, name: str, rollout: Callable[[], dict[str, Any]], margin: float
) -> Scenario:
    """Start paced traffic, run ``rollout()`` (returns the API's 202 body) and its job in a
    thread after ``margin`` seconds, and stop the traffic ``margin`` seconds after the job."""
    with wrk.around(rate) as results:
        time.sleep(margin)  # steady traffic first
        start = time.time()
        job = threading.Thread(target=run_job, args=(rollout()["job"]["id"],), daemon=True)
        job.start()
        job.join(300)
        if job.is_alive():
            raise RuntimeError(f"{name}: the job did not end in 300 s")
        end = time.time()
        time.sleep(margin)
    run = results[0]
    return Scenario(
        name=name,
        run=run,
        offered=rate,
        steady=run.rate_between(start - min(1.0, margin), start),
        during=run.rate_between(start, max(end, start + 1.0)),
        seconds=end - start,
        start=start,
    )


def container_events(dep: str, since: float, until: float, origin: float) -> list[str]:
    """The engine's stop, kill, die and OOM events of the deployment's containers, in
    seconds from ``origin`` (to tell a failure shipway caused from one done to them)."""
    engine = docker.from_env()
    try:
        events = engine.events(
            since=int(since), until=int(until) + 1, filters={"label": f"shipway.deployment={dep}"}
        )
        found = []
        for raw in events:
            event = json.loads(raw)
            if event.get("Action") in ("kill", "die", "oom", "stop", "destroy"):
                attributes = event.get("Actor", {}).get("Attributes", {})
                moment = event.get("timeNano", 0) / 1e9 - origin
                found.append(f"{moment:+.1f} s {event['Action']} {attributes.get('name', '?')}")
        return found
    finally:
        engine.close()


def retire_scheduled(dep: str) -> None:
    """Run now the retires a scale-down delay scheduled (so the next rollout starts clean)."""
    from sqlalchemy import select, update

    from shipway.db import transaction
    from shipway.ids import utcnow
    from shipway.jobs.models import Job

    with transaction() as session:
        ids = list(
            session.scalars(
                select(Job.id).where(
                    Job.deployment_id == dep, Job.kind == "retire", Job.state == "queued"
                )
            )
        )
        session.execute(update(Job).where(Job.id.in_(ids)).values(not_before=utcnow()))
    for job_id in ids:
        run_job(job_id)


def scenarios(
    ship: Shipway, images: list[Image], wrk: Wrk, rate: float, dep: str, quick: bool
) -> list[Scenario]:
    """Promote, cold rollback, warm rollback and canary, each under paced traffic."""
    margin = 0.5 if quick else 1.5
    _, v2, v3 = images
    done: list[Scenario] = []

    def scenario(name: str, rollout: Callable[[], dict[str, Any]]) -> None:
        done.append(under_load(wrk, rate, name, rollout, margin))
        last = done[-1]
        if last.run.failed:  # the engine's word on the replicas, for the report
            last.containers = container_events(
                dep, last.start - margin, time.time(), origin=last.start
            )

    scenario("promote", lambda: ship.promote(dep, ship.version(dep, v2)))
    if quick:
        return done
    scenario("cold rollback", lambda: ship.rollback(dep))
    set_delay(300)  # v1 (now serving) stays warm when the next promote replaces it
    run_job(ship.promote(dep, ship.version(dep, v2))["job"]["id"])
    scenario("warm rollback", lambda: ship.rollback(dep))
    set_delay(0)
    retire_scheduled(dep)

    scenario(
        "canary (25 %, 50 %, then switch)",
        lambda: ship.promote(dep, ship.version(dep, v3), strategy=CANARY),
    )
    return done


def run(quick: bool = False) -> Section:
    """Highest rate, then each rollout under paced load; the results as a Section."""
    section = Section("load", "Failed requests and throughput under load (wrk)")
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: make provision installs Debian's wrk")
    engine = docker.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="shipway-bench-load-"))
    images: list[Image] = []
    try:
        engine.images.get(BASE_IMAGE)
        images = [build_image(engine, f"load-v{n}-{secrets.token_hex(2)}") for n in (1, 2, 3)]
        with shipway_in(scratch) as ship:
            set_delay(0)
            dep = ship.deployment(None)
            run_job(ship.promote(dep, ship.version(dep, images[0]))["job"]["id"])
            url = ship.public_url(dep) + "/"
            wrk = Wrk(scratch, url, {image.marker for image in images})
            load_before = os.getloadavg()[0]
            highest = wrk.timed(1 if quick else 4)
            print(f"highest rate: {highest.rate:.0f} req/s", file=sys.stderr)
            rate = highest.rate * LOAD_SHARE
            done = scenarios(ship, images, wrk, rate, dep, quick)
            load_after = os.getloadavg()[0]
    finally:
        for image in images:
            with suppress(docker.errors.ImageNotFound):
                engine.images.remove(image.tag, force=True)
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    report(section, highest, done, (load_before, load_after))
    return section


def report(
    section: Section, highest: WrkRun, done: list[Scenario], load: tuple[float, float]
) -> None:
    """Rows and notes of the section."""
    section.add(
        "highest rate with no rollout (wrk unthrottled)",
        f"{highest.rate:.0f} req/s",
        target="for information",
    )
    offered = done[0].offered
    section.add(
        f"offered rate during the rollouts ({LOAD_SHARE:.0%} of the highest)",
        f"{offered:.0f} req/s",
        target="≥ 50 % of the highest",
        met=offered >= 0.5 * highest.rate,
    )
    for scenario in done:
        run = scenario.run
        section.add(
            f"{scenario.name}: failed requests / requests",
            f"{run.failed} / {run.requests}",
            target="0 failed",
            met=run.failed == 0,
        )
        section.add(
            f"{scenario.name}: throughput from the request until the job ended",
            f"{scenario.during:.0f} req/s",
            baseline=f"{scenario.offered:.0f} req/s (offered)",
            ratio=scenario.during / scenario.offered,
            target=f"≥ {THROUGHPUT_TARGET:g}x",
            met=scenario.during >= THROUGHPUT_TARGET * scenario.offered,
        )
    details = "; ".join(
        f"{s.name}: job {ms(s.seconds)}, steady before {s.steady:.0f} req/s, latency p50 "
        f"{s.run.latency_us[0] / 1000:.1f} ms p99 {s.run.latency_us[1] / 1000:.1f} ms max "
        f"{s.run.latency_us[2] / 1000:.0f} ms"
        + (
            f", failures: {dict(s.run.reasons + s.run.socket_errors)}, {s.failure_window()}; "
            f"container events (s after the request): {', '.join(s.containers) or 'none'}"
            if s.run.failed
            else ""
        )
        for s in done
    )
    section.notes += [
        f"wrk {wrk_version()}, 1 thread, {CONNECTIONS} connections (kept alive), through "
        "shipway's HAProxy on 127.0.0.1 to 3 busybox httpd replicas; the highest rate is "
        f"{highest.requests} requests in {highest.seconds:.1f} s (latency p50 "
        f"{highest.latency_us[0] / 1000:.1f} ms, p99 {highest.latency_us[1] / 1000:.1f} ms).",
        "per rollout: " + details + ".",
        "failed = non-200 answers and wrong bodies (counted in the Lua response()) + wrk's "
        "socket errors (connect, read, write, timeout; 5 s timeout). Throughput is counted "
        "in 100 ms buckets of wall clock from the rollout request until its job ended (at "
        "least 1 s); the pacing catches up at most 0.2 s of schedule, so a stall shows.",
        f"load average (1 min) {load[0]:.1f} before the highest-rate run, {load[1]:.1f} after "
        "the last rollout; wrk, HAProxy, the replicas and the job share the machine's CPUs.",
    ]


def wrk_version() -> str:
    """wrk's version line (``wrk -v`` prints it and exits 1)."""
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    return (done.stdout or done.stderr).split(" [")[0].removeprefix("wrk ").strip()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    args = parser.parse_args(argv)
    return print_section(lambda: run(quick=args.quick))


if __name__ == "__main__":
    raise SystemExit(main())
