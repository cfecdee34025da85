"""Kill in the switch, then restart, again and again: router and database agree within seconds.

Each cycle is one run of tests/e2e/test_switch_recovery.py's scenario on a new
deployment: v2's promote moved traffic in HAProxy and is blocked recording it when
the relay and the worker are SIGKILLed (shipway down; users get v2, the API shows v1
ACTIVE); then a worker and a relay start again. Cycles alternate the two ways back:

- *revert*: the lost job still holds its lease (30 s, as in ``shipway up``): the
  relay's first pass gives the route back to v1; the job resumes after its lease and
  deploys v2 again;
- *complete*: the job was requeued at once (as the start-up recovery of a dead
  instance's leases does): the resumed attempt records the switch the router made.

A probe requests the public URL every 20 ms from the restart to the end of the cycle;
every answer must be a 200. The summary gives the recovery times (restart to
agreement) per way back.

The same on SQLite (``shipway up``'s default), again and again on one data directory: each
cycle's promote is held between its router switch and its commit by the database's write
lock, then ``shipway up`` and its workers are SIGKILLed and the next ``shipway up`` completes
the switch (tests/e2e/test_switch_recovery_sqlite.py is one cycle).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.chaos.support import FULL, LONG_SCENARIO
from tests.chaos.test_haproxy_kill import Probe
from tests.e2e.conftest import Stack, embedded
from tests.e2e.embedded_support import start_up
from tests.e2e.rollout_support import SiteImage, rollout_stack, site_images
from tests.e2e.test_switch_recovery import (
    RECOVERY_BOUND_SECONDS,
    Recovery,
    api,
    finish,
    interrupt_switch,
    requeue,
    restart,
)
from tests.e2e.test_switch_recovery_sqlite import Cycle, kill_in_the_switch, sqlite_up

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    LONG_SCENARIO,
    pytest.mark.timeout(1200 if FULL else 400),
]
# fixtures, imported for pytest
__all__ = ["api", "embedded", "rollout_stack", "site_images", "sqlite_up"]

CYCLES = 6 if FULL else 2
WAYS = {  # way back: (what agreement shows, phases of the resumed attempt)
    "revert": ("site-v1", ["scale", "health_check", "switch", "drain", "retire"]),
    "complete": ("site-v2", ["switch", "drain", "retire"]),
}


def test_restarts_after_kills_in_the_switch_agree_within_seconds(
    rollout_stack: Stack,
    api: TestClient,
    site_images: dict[str, SiteImage],
    chaos_report: Any,
) -> None:
    times: dict[str, list[Recovery]] = {way: [] for way in WAYS}
    answers: dict[str, int] = {}
    for cycle in range(CYCLES):
        for service in rollout_stack.supervisor.services:
            if service.alive():
                service.kill()
        way = list(WAYS)[cycle % len(WAYS)]
        cut = interrupt_switch(rollout_stack, api, site_images, tag=f"-{cycle}")
        probe = Probe(cut.url)
        probe.start()
        if way == "complete":
            requeue(cut.job_id)
        expect, resumed_phases = WAYS[way]
        times[way].append(restart(rollout_stack, cut, expect=expect, tag=f"-{cycle}"))
        finish(cut, phases_after_kill=resumed_phases)
        probe.stopped.set()
        probe.join(10)
        for _, _, outcome in probe.outcomes:
            answers[outcome] = answers.get(outcome, 0) + 1
    summary = "; ".join(
        f"{way} {len(t)}x: {_span([r.total for r in t])} after the restart, "
        f"{_span([r.since_up for r in t])} after the processes it needs were up"
        for way, t in times.items()
        if t
    )
    chaos_report(
        f"chaos switch restart: {CYCLES} kills between the router switch and its commit; "
        f"agreement {summary}; traffic {answers}"
    )
    assert max(r.since_up for t in times.values() for r in t) < RECOVERY_BOUND_SECONDS, times
    assert set(answers) == {"200"}, answers


def test_shipway_up_killed_in_the_switch_again_and_again_on_sqlite(
    sqlite_up: Stack, site_images: dict[str, SiteImage], chaos_report: Any
) -> None:
    up, _ = start_up(sqlite_up, "up-0")
    cycles: list[Cycle] = []
    for cycle in range(CYCLES):
        up, figures = kill_in_the_switch(sqlite_up, site_images, up, f"up-{cycle + 1}")
        cycles.append(figures)
    failed = [failure for c in cycles for failure in c.failed]
    chaos_report(
        f"chaos switch restart (shipway up, SQLite): {CYCLES} kills between the router switch "
        f"and its commit; agreement {_span([c.total for c in cycles])} after the restart, "
        f"{_span([c.since_api for c in cycles])} after its API answered; "
        f"{sum(c.sent for c in cycles)} requests, {len(failed)} failed"
    )
    assert failed == [], failed


def _span(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}s"
