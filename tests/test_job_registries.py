"""The engine's registries: job kinds (with their queue) and periodic tasks (with lanes)."""

from __future__ import annotations

import threading

import pytest

from shipway.config import Settings
from shipway.jobs import handlers, periodic
from shipway.jobs.periodic import PeriodicTask


def test_every_feature_kind_is_registered_with_its_queue() -> None:
    # conftest's features_loaded did what every entry point does
    assert {"publish", "promote", "rollback", "retire", "noop"} <= set(handlers.kinds())
    assert handlers.queue_of("publish") == "builds"
    assert handlers.queue_of("promote") == handlers.queue_of("retire") == "rollouts"


def test_an_unknown_kind_or_queue_is_refused_clearly() -> None:
    with pytest.raises(LookupError, match=r"no handler for job kind 'nope'.*load_features"):
        handlers.handler_for("nope")
    with pytest.raises(ValueError, match="unknown queue 'fast'"):
        handlers.handler("x", queue="fast")


def test_the_periodic_registry_holds_every_loop_of_the_relay_process() -> None:
    lanes = {task.name: task.lane for task in periodic.tasks()}
    assert lanes == {
        "router-settle": "relay",
        "relay": "relay",
        "router-watch": "relay",
        "host-routing": "relay",
        "image-gc": "relay",
        "health-monitor": "health-monitor",
        "auto-promote": "auto-promote",
        "certificates": "certificates",
        "webhooks": "webhooks",
    }
    names = [task.name for task in periodic.tasks() if task.lane == "relay"]
    # any import order; router-settle first, before anything is reaped or sent
    assert names == ["router-settle", "relay", "router-watch", "host-routing", "image-gc"]


def _task(
    name: str, run: periodic.Task, interval: float, *, order: int = 100, **more: bool
) -> PeriodicTask:
    return PeriodicTask(
        name=name, run=run, interval=lambda _: interval, lane="test", order=order, **more
    )


def test_a_lane_runs_its_tasks_in_order_and_survives_a_failing_one() -> None:
    stop, calls = threading.Event(), []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    def counted() -> None:
        calls.append("counted")
        if calls.count("counted") == 3:
            stop.set()

    lane = [  # given out of order: the lane runs them by ``order``
        _task("later", lambda: calls.append("later"), 3600, first_run_delayed=True),
        _task("counted", counted, 0.01, order=2),
        _task("disabled", lambda: calls.append("disabled"), 0),
        _task("broken", broken, 0.01, order=1),
    ]
    thread = threading.Thread(target=periodic.run_lane, args=(lane, stop), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert calls[:2] == ["broken", "counted"]
    assert calls.count("counted") == 3 and calls.count("broken") >= 3
    assert "disabled" not in calls and "later" not in calls


def test_settings_intervals_are_read_from_settings() -> None:
    relay = next(task for task in periodic.tasks() if task.name == "relay")
    assert relay.interval(Settings(relay_interval_seconds=0.5)) == 0.5
