"""The API warms its broker sender at start, in the background (workers.celery_app.warm_sender):
the first dispatch no longer pays for kombu's transport, the connection and the queue
declaration; a broker that is down never delays or fails the start."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from kombu import Queue, pools

from shipway.config import get_settings
from tests.support.processes import wait_until
from tests.support.services import Redis
from workers import celery_app


@pytest.fixture
def fresh_apps() -> Iterator[None]:
    """New Celery apps, and no producer pool (kombu keeps them per broker, process-wide)."""
    celery_app._celery_for.cache_clear()
    pools.reset()
    yield
    celery_app._celery_for.cache_clear()
    pools.reset()


@pytest.fixture
def redis_broker(
    redis_server: Redis, monkeypatch: pytest.MonkeyPatch, fresh_apps: None
) -> Iterator[str]:
    monkeypatch.setenv("SHIPWAY_BROKER_URL", redis_server.url)
    get_settings.cache_clear()
    yield redis_server.url
    get_settings.cache_clear()


def declarations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the queues declared to the broker from now on."""
    declared: list[str] = []
    declare = Queue.declare

    def counting(self: Queue, *args: object, **kwargs: object) -> object:
        declared.append(self.name)
        return declare(self, *args, **kwargs)

    monkeypatch.setattr(Queue, "declare", counting)
    return declared


def test_after_the_warm_up_the_first_send_declares_nothing(
    redis_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = declarations(monkeypatch)

    celery_app.warm_sender()

    assert sorted(declared) == ["builds", "rollouts"]
    declared.clear()
    celery_app.send_job("job_warm", "rollouts", "noop")
    assert declared == []  # the producer pool's connection knew the queue already


def test_without_the_warm_up_the_first_send_declares_its_queue(
    redis_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The witness of the test above: the first send of a cold app pays the declaration."""
    declared = declarations(monkeypatch)

    celery_app.send_job("job_cold", "rollouts", "noop")

    assert declared == ["rollouts"]


def test_a_broker_that_is_down_neither_delays_nor_fails_the_api_start(
    shipway_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    fresh_apps: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SHIPWAY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    get_settings.cache_clear()
    started: list[threading.Thread] = []
    warm_in_background = celery_app.warm_sender_in_background

    def noted() -> threading.Thread:
        started.append(warm_in_background())
        return started[-1]

    monkeypatch.setattr(celery_app, "warm_sender_in_background", noted)
    from shipway.api import create_app

    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200
        assert len(started) == 1 and started[0].daemon
        # The connection attempt (about 2 s) runs beside the API, not before it.
        wait_until(lambda: not started[0].is_alive(), timeout=30, message="warm-up never ended")
    assert "broker sender warm-up failed" in caplog.text


def test_an_app_that_cannot_be_built_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unbuildable() -> None:
        raise OSError("broker folder not writable")

    monkeypatch.setattr(celery_app, "current_celery", unbuildable)

    thread = celery_app.warm_sender_in_background()  # does not raise

    wait_until(lambda: not thread.is_alive(), timeout=30, message="warm-up never ended")
    assert "broker sender warm-up failed" in caplog.text
