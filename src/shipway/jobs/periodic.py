"""One registry of periodic work (relay pass, reaper, health monitor, auto-promote, …).

Features register a task with ``@periodic(...)``; the relay process runs them with
``run_forever``. Tasks of one ``lane`` run one after another in a thread of their
own, so a slow probe round never delays dispatching in another lane.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from shipway.config import Settings, get_settings
from shipway.storage import is_exhaustion, record

log = logging.getLogger(__name__)

Task = Callable[[], object]
T = TypeVar("T", bound=Task)


@dataclass(frozen=True)
class PeriodicTask:
    """Run ``run`` every ``interval(settings)`` seconds (0 or less: disabled) in ``lane``.

    The interval is counted from the end of one run to the start of the next; a task
    with ``first_run_delayed`` waits one interval before its first run. Tasks of one lane
    run in ``order`` (lowest first), whatever order their modules were imported in.
    """

    name: str
    run: Task
    interval: Callable[[Settings], float]
    lane: str
    first_run_delayed: bool = False
    order: int = 100


_TASKS: dict[str, PeriodicTask] = {}


def periodic(
    name: str,
    *,
    interval: Callable[[Settings], float],
    lane: str | None = None,
    first_run_delayed: bool = False,
    order: int = 100,
) -> Callable[[T], T]:
    """Register a function to run every ``interval(settings)`` s in ``lane`` (default: its own)."""

    def register(fn: T) -> T:
        _TASKS[name] = PeriodicTask(
            name=name,
            run=fn,
            interval=interval,
            lane=lane or name,
            first_run_delayed=first_run_delayed,
            order=order,
        )
        return fn

    return register


def tasks() -> list[PeriodicTask]:
    """Every registered periodic task, by lane order (then name)."""
    return sorted(_TASKS.values(), key=lambda task: (task.order, task.name))


_starved: set[str] = set()
"""Tasks whose last pass found the disk full: said once, not on every pass."""


def run_once(task: PeriodicTask) -> None:
    """Run one task once; an error is logged, never raised (the loop goes on)."""
    try:
        task.run()
    except Exception as error:
        if is_exhaustion(error):  # one line when it starts, not a traceback every pass
            if task.name not in _starved:
                _starved.add(task.name)
                record("periodic", error, during=f"{task.name} pass")
        elif isinstance(error, OperationalError):
            log.warning("%s: database unreachable: %s", task.name, error)
        else:
            log.exception("%s pass failed", task.name)
    else:
        if task.name in _starved:
            _starved.discard(task.name)
            log.info("%s: storage space available again", task.name)


def run_lane(lane: list[PeriodicTask], stop: threading.Event) -> None:
    """Run the tasks of one lane, each when due, until ``stop`` is set."""
    settings = get_settings()
    lane = sorted(lane, key=lambda task: (task.order, task.name))
    enabled = [task for task in lane if task.interval(settings) > 0]
    for task in lane:
        if task not in enabled:
            log.info("%s disabled", task.name)
        else:
            log.info("%s started (every %.1fs)", task.name, task.interval(settings))
    if not enabled:
        return
    now = time.monotonic()
    due = {t.name: now + (t.interval(settings) if t.first_run_delayed else 0) for t in enabled}
    while not stop.is_set():
        for task in enabled:
            if time.monotonic() >= due[task.name]:
                run_once(task)
                due[task.name] = time.monotonic() + task.interval(get_settings())
        stop.wait(max(0.0, min(due.values()) - time.monotonic()))


def start(stop: threading.Event) -> list[threading.Thread]:
    """Start one daemon thread per lane; they end once ``stop`` is set."""
    lanes: dict[str, list[PeriodicTask]] = {}
    for task in tasks():
        lanes.setdefault(task.lane, []).append(task)
    threads = [
        threading.Thread(target=run_lane, args=(lane, stop), name=name, daemon=True)
        for name, lane in lanes.items()
    ]
    for thread in threads:
        thread.start()
    return threads


def run_forever(stop: threading.Event | None = None) -> None:
    """Run every registered periodic task until ``stop`` is set (or forever)."""
    stop = stop or threading.Event()
    threads = start(stop)
    while not stop.is_set():
        stop.wait(1.0)
    for thread in threads:
        thread.join(timeout=5)
