"""Config releases on the real Docker engine and router, under traffic.

One deployment (2 replicas) of an image whose ``/cgi-bin/color`` prints the ``COLOR``
config var and whose start command exits (printing the ``API_KEY`` secret) when
``MODE=crash``. Under steady traffic: a config-only change is a new release of the
same version with no failed request; a bad value fails its release as
``config_rejected`` with diagnostics while the previous release keeps serving. Then
every API answer, event, job, log record and database row is scanned for the secret.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, select

from tests.conftest import TokenFactory
from tests.e2e.rollout_support import (
    BASE_IMAGE,
    SiteImage,
    auth,
    build_image,
    create_deployment,
    promote,
    public_url,
    release,
    remove_image,
    run,
    site_version,
)

pytestmark = pytest.mark.e2e

SECRET = "e2e-" + secrets.token_hex(12)
START = (
    'sh -c \'if [ "$MODE" = crash ]; then echo "cannot start: MODE=$MODE key=$API_KEY"; '
    "exit 3; fi; exec httpd -f -p 8080 -h /srv/www'"
)


@pytest.fixture(scope="module")
def color_image() -> Iterator[SiteImage]:
    """A site whose ``/cgi-bin/color`` answers ``color=$COLOR``."""
    context = Path(tempfile.mkdtemp(prefix="sw-color-"))
    www = context / "www"
    (www / "cgi-bin").mkdir(parents=True)
    (www / "healthz").write_text("ok\n")
    color = www / "cgi-bin" / "color"
    color.write_text(
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\ncolor=%s\\n' \"$COLOR\"\n"
    )
    color.chmod(0o755)
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY www/ /srv/www/\nEXPOSE 8080\n")
    tag = f"shipway-test/config:{secrets.token_hex(3)}"
    try:
        image = build_image(context, tag=tag, marker="color")
    finally:
        shutil.rmtree(context, ignore_errors=True)
    yield image
    remove_image(tag)


class Traffic:
    """One thread GETting ``/cgi-bin/color`` until stopped: every outcome, in order."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url + "/cgi-bin/color", threading.Event()
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        deadline = time.monotonic() + 90
        with httpx.Client(timeout=10.0) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = http.get(self.url)
                    outcome = (
                        answer.text.strip()
                        if answer.status_code == 200
                        else f"HTTP {answer.status_code}"
                    )
                except httpx.HTTPError as error:
                    outcome = f"{type(error).__name__}: {error}"
                self.outcomes.append(outcome)
                time.sleep(0.01)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(self.outcomes)} requests sent"
            time.sleep(0.02)


def change(client: TestClient, app: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    answer = client.patch(
        f"/api/v1/deployments/{app['id']}/environments/production/config",
        json=body,
        headers=auth(app),
    )
    assert answer.status_code in (200, 202), answer.text
    return dict(answer.json())


def test_config_release_under_traffic_bad_config_fails_and_no_secret_leaks(
    client: TestClient,
    make_token: TokenFactory,
    color_image: SiteImage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []  # every API answer of the run, scanned at the end
    app = create_deployment(client, make_token("deployments:write"), replicas=2)
    v1 = site_version(app["id"], color_image, command=START)
    answers.append(
        json.dumps(
            change(client, app, {"values": {"COLOR": "blue"}, "secrets": {"API_KEY": SECRET}})
        )
    )
    first = promote(client, app, v1)
    assert run(first["job"]["id"]) == "succeeded"
    url = public_url(client, app)

    traffic = Traffic(url)
    traffic.thread.start()
    try:
        traffic.wait_for(20)
        green = change(client, app, {"values": {"COLOR": "green"}})
        answers.append(json.dumps(green))
        assert green["job"]["version_id"] == v1 and green["version"] == 2  # no rebuild
        assert run(green["job"]["id"]) == "succeeded"
        switched = len(traffic.outcomes)
        traffic.wait_for(switched + 20)

        crash = change(client, app, {"values": {"MODE": "crash"}})
        answers.append(json.dumps(crash))
        assert run(crash["job"]["id"]) == "failed"
        after_failure = len(traffic.outcomes)
        traffic.wait_for(after_failure + 20)
    finally:
        traffic.stop.set()
        traffic.thread.join(timeout=15)

    failed = [o for o in traffic.outcomes if o not in ("color=blue", "color=green")]
    assert failed == [], failed[:5]
    assert set(traffic.outcomes[switched:]) == {"color=green"}  # the new config serves
    assert set(traffic.outcomes[after_failure:]) == {"color=green"}  # the old release serves
    assert release(green["release_id"]).status == "ACTIVE"
    broken = release(crash["release_id"])
    assert broken.status == "FAILED" and broken.failure_reason == "config_rejected"
    diagnostics = broken.failure_diagnostics or {}
    assert {"title", "description", "action"} <= set(diagnostics)
    assert "MODE" in diagnostics["description"] and diagnostics["evidence"]["cause"] == "crash_loop"
    assert any("[redacted]" in line for line in diagnostics["evidence"]["last_log_lines"])

    answers += _every_answer(
        client, app, [first["job"]["id"], green["job"]["id"], crash["job"]["id"]]
    )
    answers += [record.getMessage() for record in caplog.records]
    answers += _every_row()
    leaks = [text[:200] for text in answers if SECRET in text]
    assert leaks == []


def _every_answer(client: TestClient, app: dict[str, Any], job_ids: list[str]) -> list[str]:
    base = f"/api/v1/deployments/{app['id']}"
    paths = [
        base,
        f"{base}/versions",
        f"{base}/events?limit=500",
        f"{base}/environments/production/config",
        "/api/v1/queue",
        "/api/v1/jobs?limit=100",
    ]
    for job_id in job_ids:
        paths += [f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/audit"]
    versions = client.get(f"{base}/versions", headers=auth(app)).json()["data"]
    for version in versions:
        paths += [f"{base}/versions/{version['id']}?environment=production"]
        paths += [f"{base}/versions/{version['id']}/build-log"]  # seeded: empty
    texts = []
    for path in paths:
        answer = client.get(path, headers=auth(app))
        assert answer.status_code == 200 or "build-log" in path, (path, answer.text)
        texts.append(answer.text)
    return texts


def _every_row() -> list[str]:
    """Every row of every table, as text (the secrets column holds a Fernet token)."""
    from shipway.db import get_engine

    engine = get_engine()
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        return [
            str(tuple(row))
            for table in metadata.sorted_tables
            for row in connection.execute(select(table)).all()
        ]
