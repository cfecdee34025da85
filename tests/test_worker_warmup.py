"""A worker's pool child builds at its start what its first job would otherwise build on the
job's clock: the health probe's HTTP client and the container runtime's client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shipway import runtime
from shipway.releases import health
from workers import signals


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    health.probe_client.cache_clear()
    runtime._runtime.cache_clear()
    yield
    health.probe_client.cache_clear()
    runtime._runtime.cache_clear()


def test_warm_up_builds_the_probe_client_and_the_runtime(fresh_caches: None) -> None:
    signals.warm_up()

    assert health.probe_client.cache_info().currsize == 1
    assert runtime._runtime.cache_info().currsize == 1
    # The first job then gets the very same objects, built before it started.
    assert health.probe_client() is health.probe_client()
    assert health.probe_client.cache_info().misses == 1


def test_a_failing_warm_up_is_logged_and_never_stops_the_child(
    fresh_caches: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_engine() -> None:
        raise RuntimeError("no Docker engine")

    monkeypatch.setattr(runtime, "get_runtime", no_engine)

    signals.warm_up()  # does not raise

    assert "worker warm-up failed" in caplog.text
    assert health.probe_client.cache_info().currsize == 1


def test_the_pool_child_hook_warms_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """``register_child`` (Celery's worker_process_init) ends with the warm-up."""
    calls: list[str] = []
    monkeypatch.setattr(signals, "warm_up", lambda: calls.append("warm_up"))
    from shipway.jobs import runner
    from shipway.workers_registry import presence

    monkeypatch.setattr(presence, "start", lambda **_: calls.append("registered"))
    monkeypatch.setattr(runner, "on_current_job", lambda _callback: None)

    signals.register_child()

    assert calls == ["registered", "warm_up"]
