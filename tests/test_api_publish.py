"""Publish through the API on both databases: what is accepted, and that refusals leave nothing.

Every refusal is followed by the same check: no version row, no job row, no
idempotency record, nothing under ``<data_dir>/sources`` or ``<data_dir>/staging``,
and the next successful publish still gets the next gapless version number.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shipway.config import get_settings
from tests.conftest import TokenFactory, auth
from tests.test_archive import HOSTILE, SITE, Entry, site_archive, tar_bytes

MAX_UPLOAD = 200_000
PROVENANCE = {
    "git_branch": "feature/landing",
    "git_hash": "3f2c9a1b7d0e4f6a8b9c0d1e2f3a4b5c6d7e8f90",
    "git_message": "Landing page: hero and footer\n\nLonger body, with ünïcode.",
    "is_dirty": "true",
    "author_name": "Ada Lovelace",
    "author_email": "ada@example.com",
    "branch_id": "br_42",
    "external_user_id": "user-7",
    "source_filesystem_id": "fs_9",
}


@pytest.fixture(autouse=True)
def small_limits(shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Upload/unpack limits the hostile archives are measured against (before the client)."""
    monkeypatch.setenv("SHIPWAY_MAX_UPLOAD_BYTES", str(MAX_UPLOAD))
    monkeypatch.setenv("SHIPWAY_MAX_UNPACKED_BYTES", str(1 << 20))
    monkeypatch.setenv("SHIPWAY_MAX_SOURCE_FILES", "10")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def publish(
    client: TestClient,
    deployment_id: str,
    token: dict[str, str],
    archive: bytes,
    *,
    key: str | None = "k-1",
    filename: str = "site.tar.gz",
    **form: str,
) -> httpx.Response:
    """POST a source archive (multipart field ``source``) with form metadata."""
    headers = auth(token, **({"Idempotency-Key": key} if key is not None else {}))
    return client.post(
        f"/api/v1/deployments/{deployment_id}/versions",
        files={"source": (filename, archive, "application/octet-stream")},
        data=form,
        headers=headers,
    )


def counts(deployment_id: str) -> tuple[int, int, int]:
    """(versions, jobs, idempotency records) of a deployment's workspace, from the database."""
    from shipway.catalog.models import Version
    from shipway.db import session_factory
    from shipway.idempotency.models import IdempotencyRecord
    from shipway.jobs.models import Job

    with session_factory()() as session:
        versions = session.scalar(
            select(func.count()).select_from(Version).where(Version.deployment_id == deployment_id)
        )
        jobs = session.scalar(
            select(func.count()).select_from(Job).where(Job.deployment_id == deployment_id)
        )
        records = session.scalar(select(func.count()).select_from(IdempotencyRecord))
    return int(versions or 0), int(jobs or 0), int(records or 0)


def stored_files(folder: str) -> list[str]:
    """Every path under ``<data_dir>/<folder>`` (empty if the folder is absent)."""
    root = Path(os.environ["SHIPWAY_DATA_DIR"]) / folder
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def assert_refused(
    response: httpx.Response,
    status: int,
    code: str,
    deployment_id: str,
    before: tuple[int, int, int],
) -> dict[str, Any]:
    """The one error shape with ``status``/``code``, and nothing left behind."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert "Traceback" not in response.text
    assert counts(deployment_id) == before
    assert stored_files("staging") == []
    sources_before = before[0]
    assert len([p for p in stored_files("sources") if "/" not in p]) == sources_before
    return body


def assert_next_number(
    client: TestClient, deployment: dict[str, Any], expected: int, *, key: str
) -> None:
    """A good publish after the refusals gets ``expected`` (no gap)."""
    response = publish(
        client, deployment["id"], deployment["token"], site_archive("tar.gz"), key=key
    )
    assert response.status_code == 202, response.text
    assert response.json()["version"]["version_number"] == expected


# --------------------------------------------------------------------------- accepted


def test_publish_static_site(client: TestClient, deployment: dict[str, Any]) -> None:
    from shipway.catalog.models import Version
    from shipway.db import session_factory
    from shipway.jobs.models import Job

    archive = site_archive("tar.gz")
    response = publish(client, deployment["id"], deployment["token"], archive, **PROVENANCE)

    assert response.status_code == 202, response.text
    body = response.json()
    version, job = body["version"], body["job"]
    assert version["state"] == "created"
    assert version["version_number"] == 1
    assert version["kind"] == "static"
    assert version["deployment_id"] == deployment["id"]
    assert version["source_sha256"] == hashlib.sha256(archive).hexdigest()
    assert version["artifact_sha256"] is None and version["runtime_image"] is None
    assert version["build_log_uri"] == (
        f"/api/v1/deployments/{deployment['id']}/versions/{version['id']}/build-log"
    )
    assert (job["kind"], job["queue"], job["state"]) == ("publish", "builds", "queued")
    assert job["version_id"] == version["id"]
    assert job["deployment_id"] == deployment["id"]
    for field in ("git_branch", "git_hash", "git_message", "author_name", "author_email"):
        assert version[field] == PROVENANCE[field]
    assert version["is_dirty"] is True
    assert version["branch_id"] == "br_42"
    assert version["external_user_id"] == "user-7"
    assert version["source_filesystem_id"] == "fs_9"

    # The same facts as the API reads them back, and as the database stores them.
    read = client.get(
        f"/api/v1/deployments/{deployment['id']}/versions/{version['id']}",
        headers=auth(deployment["token"]),
    )
    assert read.status_code == 200
    for field in (*PROVENANCE, "source_sha256", "build_log_uri", "state"):
        assert read.json()[field] == version[field], field
    with session_factory()() as session:
        row = session.get(Version, version["id"])
        job_row = session.get(Job, job["id"])
        assert row is not None and job_row is not None
        assert row.git_message == PROVENANCE["git_message"]
        assert row.is_dirty is True
        assert row.source_filesystem_id == "fs_9"
        assert job_row.params["promote_to"] is None
        assert job_row.params["source_bytes"] == len(archive)
        manifest = job_row.params["source_manifest"]
        assert manifest["file_count"] == len(SITE)
        assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
            path: hashlib.sha256(data).hexdigest() for path, data in SITE.items()
        }

    # The source now belongs to the version; staging is empty.
    tree = Path(os.environ["SHIPWAY_DATA_DIR"]) / "sources" / version["id"] / "tree"
    assert (tree / "index.html").read_bytes() == SITE["index.html"]
    assert (tree.parent / "archive").read_bytes() == archive
    assert stored_files("staging") == []
    listed = client.get(
        f"/api/v1/deployments/{deployment['id']}/versions", headers=auth(deployment["token"])
    ).json()
    assert [v["id"] for v in listed["data"]] == [version["id"]]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_publish_other_formats(client: TestClient, deployment: dict[str, Any], fmt: str) -> None:
    archive = site_archive(fmt)
    response = publish(client, deployment["id"], deployment["token"], archive, filename=f"s.{fmt}")
    assert response.status_code == 202, response.text
    assert response.json()["version"]["source_sha256"] == hashlib.sha256(archive).hexdigest()


def test_publish_records_promote_to_and_runtime_overrides(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    from shipway.db import session_factory
    from shipway.jobs.models import Job

    response = publish(
        client,
        deployment["id"],
        deployment["token"],
        site_archive("tar.gz"),
        promote_to="production",
        runtime_port="9000",
        health_check_path="/healthz",
    )
    assert response.status_code == 202, response.text
    version = response.json()["version"]
    assert (version["runtime_port"], version["health_check_path"]) == (9000, "/healthz")
    with session_factory()() as session:
        job = session.get(Job, response.json()["job"]["id"])
        assert job is not None and job.params["promote_to"] == "production"


def test_container_publish_with_dockerfile(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:write")
    created = client.post(
        "/api/v1/deployments",
        json={"name": "api", "kind": "container", "runtime_port": 5000},
        headers=auth(token),
    )
    assert created.status_code == 201, created.text
    archive = tar_bytes([Entry("Dockerfile", b"FROM scratch\n"), Entry("app.py", b"print(1)\n")])
    response = publish(client, created.json()["id"], token, archive)
    assert response.status_code == 202, response.text
    assert response.json()["version"]["kind"] == "container"
    assert response.json()["version"]["runtime_port"] == 5000


# --------------------------------------------------------------------------- idempotency


def test_same_key_same_upload_replays(client: TestClient, deployment: dict[str, Any]) -> None:
    archive = site_archive("tar.gz")
    first = publish(
        client, deployment["id"], deployment["token"], archive, key="same", git_hash="a"
    )
    second = publish(
        client, deployment["id"], deployment["token"], archive, key="same", git_hash="a"
    )
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert counts(deployment["id"])[:2] == (1, 1)
    assert stored_files("staging") == []
    assert [p for p in stored_files("sources") if "/" not in p] == [first.json()["version"]["id"]]


@pytest.mark.parametrize("change", ["archive", "form"])
def test_same_key_other_upload_is_422(
    client: TestClient, deployment: dict[str, Any], change: str
) -> None:
    token = deployment["token"]
    first = publish(client, deployment["id"], token, site_archive("tar.gz"), key="k", git_hash="a")
    assert first.status_code == 202
    before = counts(deployment["id"])
    if change == "archive":
        other = publish(client, deployment["id"], token, site_archive("zip"), key="k", git_hash="a")
    else:
        other = publish(
            client, deployment["id"], token, site_archive("tar.gz"), key="k", git_hash="b"
        )
    assert_refused(other, 422, "idempotency_key_reused", deployment["id"], before)
    assert_next_number(client, deployment, 2, key="k-next")


# --------------------------------------------------------------------------- refusals


def test_missing_idempotency_key_is_400(client: TestClient, deployment: dict[str, Any]) -> None:
    response = publish(client, deployment["id"], deployment["token"], site_archive("tar"), key=None)
    assert_refused(response, 400, "idempotency_key_required", deployment["id"], (0, 0, 0))
    assert_next_number(client, deployment, 1, key="k-next")


def test_read_only_token_is_403(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    reader = make_token("deployments:read")
    response = publish(client, deployment["id"], reader, site_archive("tar.gz"))
    assert_refused(response, 403, "insufficient_scope", deployment["id"], (0, 0, 0))
    assert_next_number(client, deployment, 1, key="k-next")


def test_other_workspace_deployment_is_404(
    client: TestClient, deployment: dict[str, Any], make_token: TokenFactory
) -> None:
    stranger = make_token("deployments:write", workspace="globex")
    response = publish(client, deployment["id"], stranger, site_archive("tar.gz"))
    assert_refused(response, 404, "not_found", deployment["id"], (0, 0, 0))
    assert_next_number(client, deployment, 1, key="k-next")


def test_unknown_deployment_is_404(client: TestClient, deployment: dict[str, Any]) -> None:
    response = publish(client, "dep_doesnotexist", deployment["token"], site_archive("tar.gz"))
    assert_refused(response, 404, "not_found", deployment["id"], (0, 0, 0))


BAD_FORMS: list[dict[str, str]] = [
    {"colour": "blue"},
    {"runtime_port": "0"},
    {"promote_to": "Not An Env"},
    {"health_check_path": "no-slash"},
    {"is_dirty": "maybe"},
    {"acp_type": "carrier-pigeon"},
    {"git_hash": "x" * 65},
]


def test_bad_form_fields_are_422(client: TestClient, deployment: dict[str, Any]) -> None:
    for form in BAD_FORMS:
        response = publish(
            client, deployment["id"], deployment["token"], site_archive("tar"), **form
        )
        body = assert_refused(response, 422, "validation_error", deployment["id"], (0, 0, 0))
        field = next(iter(form))
        assert any(
            field in error["loc"] or field in error["msg"]
            for error in body["error"]["details"]["errors"]
        ), (form, body)
    assert_next_number(client, deployment, 1, key="k-next")


def test_missing_source_field_is_422(client: TestClient, deployment: dict[str, Any]) -> None:
    response = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions",
        data={"git_hash": "abc"},
        files={"other": ("x.tar", site_archive("tar"), "application/x-tar")},
        headers=auth(deployment["token"], **{"Idempotency-Key": "k"}),
    )
    assert_refused(response, 422, "validation_error", deployment["id"], (0, 0, 0))


def test_too_large_archive_is_413(client: TestClient, deployment: dict[str, Any]) -> None:
    archive = os.urandom(MAX_UPLOAD + 1)
    response = publish(client, deployment["id"], deployment["token"], archive)
    body = assert_refused(response, 413, "source_too_large", deployment["id"], (0, 0, 0))
    assert body["error"]["details"]["limit_bytes"] == MAX_UPLOAD
    # Far over the limit: refused from Content-Length, before the body is read.
    huge = publish(
        client, deployment["id"], deployment["token"], os.urandom(MAX_UPLOAD + 1_200_000)
    )
    assert_refused(huge, 413, "payload_too_large", deployment["id"], (0, 0, 0))
    assert_next_number(client, deployment, 1, key="k-next")


HOSTILE_STATUS = {
    "source_invalid": 422,
    "source_too_large_unpacked": 413,
    "unsupported_archive": 415,
}


def test_hostile_archives_are_refused_and_leave_nothing(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    token = deployment["token"]
    good = publish(client, deployment["id"], token, site_archive("tar"), key="first")
    assert good.status_code == 202
    before = counts(deployment["id"])
    problems: dict[str, str] = {}
    for name, (build, _error, code) in sorted(HOSTILE.items()):  # one database for all
        response = publish(client, deployment["id"], token, build(), key=f"hostile-{name}")
        try:
            assert_refused(response, HOSTILE_STATUS[code], code, deployment["id"], before)
        except AssertionError as error:
            problems[name] = f"{response.status_code} {response.text[:300]} ({error})"
    assert problems == {}
    assert_next_number(client, deployment, 2, key="after")


def test_container_without_dockerfile_is_422(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:write")
    created = client.post(
        "/api/v1/deployments", json={"name": "api", "kind": "container"}, headers=auth(token)
    )
    assert created.status_code == 201, created.text
    deployment_id = created.json()["id"]
    no_dockerfile = tar_bytes(
        [Entry("app.py", b"print(1)\n"), Entry("sub/Dockerfile", b"FROM scratch\n")]
    )
    response = publish(client, deployment_id, token, no_dockerfile)
    body = assert_refused(response, 422, "source_invalid", deployment_id, (0, 0, 0))
    assert body["error"]["details"]["files_at_root"] == ["app.py"]
    # A corrected upload may reuse the key (errors store nothing), and gets number 1.
    fixed = tar_bytes([Entry("Dockerfile", b"FROM scratch\n"), Entry("app.py", b"print(1)\n")])
    response = publish(client, deployment_id, token, fixed)
    assert response.status_code == 202, response.text
    assert response.json()["version"]["version_number"] == 1


def test_numbers_stay_gapless_across_many_refusals(
    client: TestClient, deployment: dict[str, Any]
) -> None:
    token = deployment["token"]
    for round_number in range(1, 4):
        for name in ("dotdot", "unknown_format", "unpacked_bomb_zip"):
            refused = publish(client, deployment["id"], token, HOSTILE[name][0](), key=f"{name}")
            assert 400 <= refused.status_code < 500
        ok = publish(client, deployment["id"], token, site_archive("zip"), key=f"ok-{round_number}")
        assert ok.status_code == 202, ok.text
        assert ok.json()["version"]["version_number"] == round_number
    assert counts(deployment["id"])[:2] == (3, 3)
    assert stored_files("staging") == []
