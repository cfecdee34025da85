"""The embedded mode's data directory fills up under publishes, then space is freed.

A real ``shipway api`` process runs on the embedded settings (SQLite and the filesystem
queue) with its data directory on a small tmpfs. Each round leaves a few MiB free and
publishes 1 MiB archives of random bytes over one keep-alive connection until the disk
is full (each accepted version keeps its archive and its unpacked tree), then takes the
last free byte and creates deployments until the database has no room for one, reads
``/readyz`` and ``GET /queue``, then frees the space and retries the last refused publish
with the same Idempotency-Key.

Checks: every answer is 201/202 or ``507 insufficient_storage`` with ``Retry-After`` —
never a 422 blaming the archive, never a 500, never a reset connection; the API process
lives on; the database holds exactly the versions that were accepted, the sources folder
exactly their folders, staging nothing; each refusal is counted in
``shipway_storage_exhausted_total`` and logged on one line without a traceback; and the
first request after the space is freed succeeds (the summary gives that time).
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shipway.catalog.models import Version
from shipway.db import session_factory
from tests.chaos.support import FULL, SCALE
from tests.e2e.conftest import Api, Stack, embedded
from tests.e2e.helpers import api_token
from tests.support.disk import Filler, MiB, mounted_tmpfs, needs_root
from tests.support.processes import executable
from tests.test_archive import Entry, tar_bytes

__all__ = ["embedded"]  # a fixture, imported for pytest

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, needs_root, pytest.mark.timeout(600)]

ROUNDS = 6 if FULL else 2
TMPFS_SIZE = "96m" if FULL else "40m"
LEAVE = 6 * MiB  # free space at the start of a round: room for about two publishes
REFUSED_OPERATIONS = ("source_upload", "database", "write")


def big_site() -> bytes:
    """A 1 MiB site of random bytes (incompressible: as large stored as unpacked)."""
    return tar_bytes([Entry("index.html", b"<h1>full</h1>\n"), Entry("blob.bin", os.urandom(MiB))])


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The tmpfs, mounted where ``embedded`` puts the data directory (before it starts)."""
    with mounted_tmpfs(tmp_path / "data", size=TMPFS_SIZE) as mount:
        yield mount


@pytest.fixture
def api(data_dir: Path, embedded: Stack) -> Api:
    """``shipway api`` on the tmpfs: a 16 MiB low mark, no reserve (writes meet ENOSPC)."""
    embedded.settings.update(SHIPWAY_MIN_FREE_BYTES=str(16 * MiB), SHIPWAY_RESERVED_FREE_BYTES="0")
    subprocess.run([executable("shipway"), "db", "upgrade"], env=embedded.env, check=True)
    return embedded.start_api()


class Driver:
    """One keep-alive client; every answer is remembered by what was asked."""

    def __init__(self, api: Api, token: str) -> None:
        self.http = api.client(token)
        self.answers: collections.Counter[str] = collections.Counter()
        self.refusals: collections.Counter[str] = collections.Counter()
        self.accepted: list[str] = []  # version ids

    def publish(self, deployment_id: str, key: str) -> int:
        response = self.http.post(
            f"/api/v1/deployments/{deployment_id}/versions",
            files={"source": ("site.tar", big_site(), "application/x-tar")},
            headers={"Idempotency-Key": key},
        )
        self._note("publish", response, ok=202)
        if response.status_code == 202:
            self.accepted.append(response.json()["version"]["id"])
        return response.status_code

    def create_deployment(self) -> int:
        name = f"site-{secrets.token_hex(3)}"
        response = self.http.post("/api/v1/deployments", json={"name": name, "kind": "static"})
        self._note("create", response, ok=201)
        return response.status_code

    def _note(self, what: str, response: httpx.Response, *, ok: int) -> None:
        self.answers[f"{what} {response.status_code}"] += 1
        if response.status_code == ok:
            return
        assert response.status_code == 507, response.text  # never 422 nor 500
        error = response.json()["error"]
        assert error["code"] == "insufficient_storage", error
        assert int(response.headers["Retry-After"]) > 0
        assert error["details"]["operation"] in REFUSED_OPERATIONS
        self.refusals[error["details"]["operation"]] += 1


def exhausted_total(driver: Driver) -> dict[str, float]:
    text = driver.http.get("/metrics").text
    found = re.findall(r'^shipway_storage_exhausted_total\{operation="(\w+)"\} (\S+)$', text, re.M)
    return {operation: float(n) for operation, n in found}


def test_a_full_data_directory_refuses_cleanly_and_recovers_when_freed(
    api: Api, data_dir: Path, chaos_report: Any
) -> None:
    driver = Driver(api, api_token("deployments:write"))
    deployment_id = driver.http.post(
        "/api/v1/deployments", json={"name": "site", "kind": "static"}
    ).json()["id"]
    filler, recoveries = Filler(data_dir), []
    for round_ in range(ROUNDS):
        filler.fill(leave=LEAVE)
        assert driver.http.get("/readyz").json()["status"] == "degraded"
        key, consecutive, attempts = "", 0, 0
        while consecutive < 3:  # the disk is full once three publishes in a row are refused
            attempts += 1
            assert attempts < 20, driver.answers
            key = f"r{round_}-{attempts}"
            consecutive = consecutive + 1 if driver.publish(deployment_id, key) == 507 else 0
        filler.fill(leave=0)  # not a byte left: the database's next pages have no room
        creates = 0
        while driver.create_deployment() == 201:  # the write-ahead log may hold a few rows
            creates += 1
            assert creates < 300, driver.answers
        assert driver.http.get("/readyz").status_code == 503
        queue = driver.http.get("/api/v1/queue").json()["storage"]
        assert queue["exhausted"] is True, queue
        filler.free()
        freed = time.monotonic()
        assert driver.publish(deployment_id, key) == 202  # the refused key, retried
        recoveries.append(time.monotonic() - freed)
        assert driver.http.get("/readyz").status_code == 200

    assert api.service.alive(), api.service.log_tail()
    with session_factory()() as session:
        versions = session.scalar(
            select(func.count()).select_from(Version).where(Version.deployment_id == deployment_id)
        )
    assert versions == len(driver.accepted)
    assert sorted(p.name for p in (data_dir / "sources").iterdir()) == sorted(driver.accepted)
    assert list((data_dir / "staging").iterdir()) == []
    counted = exhausted_total(driver)
    assert {op: counted.get(op, 0) for op in driver.refusals} == dict(driver.refusals)
    log = api.service.log()
    lines = [line for line in log.splitlines() if "storage exhausted during" in line]
    refused = sum(driver.refusals.values())
    assert len([line for line in lines if "during dispatch" not in line]) == refused
    assert "Traceback" not in log, api.service.log_tail(80)
    chaos_report(
        f"chaos storage exhaustion: {ROUNDS} rounds on a {TMPFS_SIZE} tmpfs; answers "
        f"{dict(sorted(driver.answers.items()))}; 507 by operation {dict(driver.refusals)}; "
        f"versions {versions}; first request after freeing space answered in "
        f"{min(recoveries) * 1000:.0f}-{max(recoveries) * 1000:.0f} ms"
    )
    assert SCALE.name in ("smoke", "full")
