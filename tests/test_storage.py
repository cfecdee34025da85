"""Storage exhaustion is a server condition (507 insufficient_storage), shown before it comes.

The data directory (and its SQLite database) is a real 40 MiB tmpfs, filled with a real
file: a publish that meets the full disk while writing the archive or unpacking it, a
publish below the reserve, and database writes with no room left answer 507 with
``Retry-After``, leave no file and no row, and the same request succeeds once the filler
is gone. Low space shows in ``/readyz``, ``GET /queue`` and ``/metrics`` first. The
pure-logic part (which errors mean a full disk) is at the end.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from shipway.config import get_settings
from shipway.storage import is_exhaustion
from tests.conftest import _migrate, auth
from tests.support.disk import Filler, MiB, mounted_tmpfs, needs_root
from tests.test_api_publish import counts, publish, stored_files
from tests.test_archive import Entry, site_archive, tar_bytes

TMPFS_SIZE = "40m"
MIN_FREE = 16 * MiB
# Random bytes do not compress: the archive is as large on disk as unpacked.
BIG_SITE = tar_bytes([Entry("index.html", b"<h1>big</h1>\n"), Entry("blob.bin", os.urandom(MiB))])


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied into each test's tmpfs (migrating is slow)."""
    folder = tmp_path_factory.mktemp("storage-template")
    _migrate(f"sqlite:///{folder / 'shipway.db'}", folder)
    return folder / "shipway.db"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs at ``tmp_path/data``: shipway_env's data directory."""
    with mounted_tmpfs(tmp_path / "data", size=TMPFS_SIZE) as mount:
        try:
            yield mount
        finally:
            from shipway.db import engine_for

            engine_for(f"sqlite:///{mount / 'shipway.db'}").dispose()  # close the database


@pytest.fixture
def db_url(tmpfs: Path, template_db: Path) -> str:
    """conftest's database fixture, overridden: SQLite inside the tmpfs data directory."""
    shutil.copy(template_db, tmpfs / "shipway.db")
    return f"sqlite:///{tmpfs / 'shipway.db'}"


@pytest.fixture(autouse=True)
def storage_limits(shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Low below 16 MiB; no reserve unless a test sets one (so writes meet ENOSPC)."""
    monkeypatch.setenv("SHIPWAY_MIN_FREE_BYTES", str(MIN_FREE))
    monkeypatch.setenv("SHIPWAY_RESERVED_FREE_BYTES", "0")
    get_settings.cache_clear()


@pytest.fixture
def filler(tmpfs: Path) -> Iterator[Filler]:
    disk = Filler(tmpfs)
    yield disk
    disk.free()


def assert_insufficient_storage(response: httpx.Response, operation: str) -> None:
    """507 in the one error shape, with Retry-After and the operation, no traceback."""
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert response.json()["error"]["details"]["operation"] == operation
    assert int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in response.text and "Errno" not in response.text


def rendered(queue_view: dict[str, Any]) -> str:
    from rich.console import Console

    from shipway.client.render.queue import queue_view as render

    console = Console(record=True, width=200)
    console.print(render(queue_view))
    return console.export_text()


def exhausted_total(client: TestClient, operation: str) -> float:
    return metric(client, "shipway_storage_exhausted_total", f'operation="{operation}"')


def metric(client: TestClient, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    pattern = rf"^{name}{{{labels}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} missing from /metrics"
    return float(found.group(1))


@needs_root
@pytest.mark.parametrize(
    ("where", "leave"),
    [("writing the archive", 256 * 1024), ("unpacking it", MiB + MiB // 2)],
)
def test_publish_on_a_full_disk_is_507_leaves_nothing_and_recovers(
    client: TestClient,
    deployment: dict[str, Any],
    filler: Filler,
    caplog: pytest.LogCaptureFixture,
    where: str,
    leave: int,
) -> None:
    before = counts(deployment["id"])
    count_before = exhausted_total(client, "source_upload")
    filler.fill(leave=leave)

    refused = publish(client, deployment["id"], deployment["token"], BIG_SITE, key="full")

    assert_insufficient_storage(refused, "source_upload")  # never 422 source_invalid, nor 500
    assert counts(deployment["id"]) == before
    assert stored_files("staging") == [] and stored_files("sources") == []
    assert exhausted_total(client, "source_upload") == count_before + 1
    lines = [r for r in caplog.records if "storage exhausted" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None

    filler.free()
    accepted = publish(client, deployment["id"], deployment["token"], BIG_SITE, key="full")
    assert accepted.status_code == 202, accepted.text  # the same key: the 507 stored nothing
    assert accepted.json()["version"]["version_number"] == 1


@needs_root
def test_no_room_left_shows_everywhere_then_recovers(
    client: TestClient, deployment: dict[str, Any], filler: Filler
) -> None:
    token, reader = deployment["token"], auth(deployment["token"])
    filler.fill(leave=8 * MiB)  # low, not exhausted: everything still works
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
    assert ready.json()["checks"]["storage"].startswith("low: ")
    view = client.get("/api/v1/queue", headers=reader).json()
    storage = view["storage"]
    assert storage["low"] is True and storage["exhausted"] is False
    assert "— low (below 16.0 MiB)" in rendered(view)  # what `shipway queue` prints
    assert storage["free_bytes"] <= 8 * MiB and storage["min_free_bytes"] == MIN_FREE
    assert (
        0
        < metric(client, "shipway_data_dir_free_bytes")
        < metric(client, "shipway_data_dir_min_free_bytes")
    )
    assert metric(client, "shipway_data_dir_size_bytes") == 40 * MiB

    filler.fill(leave=0)
    refused = publish(client, deployment["id"], token, site_archive("tar.gz"), key="k")
    assert_insufficient_storage(refused, "source_upload")
    assert stored_files("staging") == []
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503, not_ready.text
    assert not_ready.json()["error"]["details"]["checks"]["storage"].startswith("exhausted: ")
    assert client.get("/api/v1/queue", headers=reader).json()["storage"]["exhausted"] is True

    filler.free()
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["storage"] == "ok", ready
    accepted = publish(client, deployment["id"], token, site_archive("tar.gz"), key="k")
    assert accepted.status_code == 202, accepted.text


@needs_root
def test_a_reserve_refuses_publishes_before_they_write(
    client: TestClient,
    deployment: dict[str, Any],
    filler: Filler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPWAY_RESERVED_FREE_BYTES", str(4 * MiB))
    get_settings.cache_clear()
    filler.fill(leave=2 * MiB)  # room for this archive, not for the reserve
    refused = publish(client, deployment["id"], deployment["token"], site_archive("tar.gz"))
    assert_insufficient_storage(refused, "source_upload")
    assert client.get("/readyz").status_code == 503
    filler.free()
    accepted = publish(client, deployment["id"], deployment["token"], site_archive("tar.gz"))
    assert accepted.status_code == 202, accepted.text


@needs_root
def test_a_full_database_is_507_and_recovers(
    client: TestClient, deployment: dict[str, Any], filler: Filler
) -> None:
    headers = auth(deployment["token"])
    filler.fill(leave=0)
    answers: list[httpx.Response] = []
    while len(answers) < 300 and (not answers or answers[-1].status_code == 201):
        # The database's write-ahead log may still have room for a few rows.
        answers.append(
            client.post(
                "/api/v1/deployments",
                json={"name": f"site-{len(answers)}", "kind": "static"},
                headers=headers,
            )
        )
    assert_insufficient_storage(answers[-1], "database")
    created = sum(1 for a in answers if a.status_code == 201)

    filler.free()
    again = client.post(
        "/api/v1/deployments", json={"name": "after", "kind": "static"}, headers=headers
    )
    assert again.status_code == 201, again.text
    listed = client.get("/api/v1/deployments", headers=headers, params={"limit": 200}).json()
    assert len(listed["data"]) == created + 2  # the fixture's, those created, "after"


@needs_root
def test_a_job_the_full_queue_folder_cannot_take_stays_queued_for_the_relay(
    shipway_env: dict[str, str], filler: Filler, tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded queue is a folder of the data directory: a message that finds no room
    leaves no file (not even an empty one), is counted and logged as exhaustion, and the
    job waits, queued, for the relay."""
    from shipway.jobs import dispatch as dispatching
    from shipway.storage import exhausted_counts
    from tests.e2e.helpers import enqueue_noop, get_job, workspace_id

    monkeypatch.setattr(dispatching, "_broker_down_until", 0.0)  # restored afterwards
    workspace = workspace_id("acme")
    first = enqueue_noop(workspace=workspace, seconds=0)  # sent: the folders exist
    waiting = enqueue_noop(workspace=workspace, seconds=0, dispatch=False)
    filler.fill(leave=0)
    before = exhausted_counts()["dispatch"]

    assert dispatching.dispatch([dispatching.Queued.of(get_job(waiting))]) == 0
    assert exhausted_counts()["dispatch"] == before + 1
    messages = list((tmpfs / "broker" / "out").iterdir())  # the first job's, whole; no other
    assert len(messages) == 1 and messages[0].stat().st_size > 0, messages
    assert get_job(waiting).dispatched_at is None and get_job(waiting).state == "queued"

    filler.free()
    assert dispatching.dispatch([dispatching.Queued.of(get_job(waiting))]) == 1
    assert get_job(waiting).dispatched_at is not None and get_job(first).dispatched_at


@needs_root
def test_a_build_that_finds_the_disk_full_fails_as_insufficient_storage(
    client: TestClient, deployment: dict[str, Any], filler: Filler, tmpfs: Path
) -> None:
    """The version fails for what happened (not internal_error, "a shipway bug"), and the
    build's half-copied work folder is gone."""
    from shipway.jobs.runner import run_job

    token = auth(deployment["token"])
    accepted = publish(client, deployment["id"], deployment["token"], BIG_SITE, key="b")
    assert accepted.status_code == 202, accepted.text
    job_id, version_id = accepted.json()["job"]["id"], accepted.json()["version"]["id"]
    filler.fill(leave=256 * 1024)  # room for the database's writes, not for the 1 MiB copy

    assert run_job(job_id) == "failed"

    job = client.get(f"/api/v1/jobs/{job_id}", headers=token).json()
    assert job["failure_reason"] == "insufficient_storage", job
    assert job["failure_diagnostics"]["title"] == "The server ran out of storage space"
    version = client.get(f"/api/v1/versions/{version_id}", headers=token).json()
    assert version["failure_reason"] == "insufficient_storage", version
    assert not (tmpfs / "builds" / version_id).exists()


@needs_root
def test_a_periodic_task_on_a_full_disk_says_so_once_then_recovers(
    shipway_env: dict[str, str], filler: Filler, tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's tasks run every second: a full disk is one line, not a traceback a pass."""
    from shipway.jobs.periodic import PeriodicTask, run_once

    def write_state() -> None:
        (tmpfs / "state.bin").write_bytes(os.urandom(MiB))

    caplog.set_level(logging.INFO, logger="shipway.jobs.periodic")
    task = PeriodicTask(name="state-writer", run=write_state, interval=lambda _: 1.0, lane="t")
    filler.fill(leave=0)
    for _ in range(3):
        run_once(task)
    said = [r for r in caplog.records if "state-writer" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, [r.getMessage() for r in said]
    assert "storage exhausted during state-writer pass" in said[0].getMessage()

    filler.free()
    run_once(task)
    assert (tmpfs / "state.bin").stat().st_size == MiB
    assert "state-writer: storage space available again" in caplog.text


# --------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
        OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")),
    ],
)
def test_full_disk_errors_are_recognised(error: BaseException) -> None:
    assert is_exhaustion(error)


def test_a_copytree_that_ran_out_of_space_is_recognised() -> None:
    full = shutil.Error([("a", "b", "[Errno 28] No space left on device: 'a' -> 'b'")])
    denied = shutil.Error([("a", "b", "[Errno 13] Permission denied: 'b'")])
    assert is_exhaustion(full) and not is_exhaustion(denied)


def test_a_wrapped_full_disk_is_recognised() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("write failed") from cause
    except RuntimeError as wrapped:
        assert is_exhaustion(wrapped)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EACCES, "Permission denied"),
        sqlite3.OperationalError("database is locked"),
        ValueError("no"),
    ],
)
def test_other_errors_are_not_exhaustion(error: BaseException) -> None:
    assert not is_exhaustion(error)


def test_other_writes_on_a_full_disk_are_507_other_os_errors_stay_500() -> None:
    from starlette.requests import Request

    from shipway.api import _os_error

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    full = _os_error(request, OSError(errno.ENOSPC, "No space left on device"))
    assert full.status_code == 507 and full.headers["Retry-After"] == "30"
    assert _os_error(request, OSError(errno.EACCES, "Permission denied")).status_code == 500
