"""``shipway.client`` as a Python library: publish, promote, roll back, wait for jobs.

Thin typed helpers over ``ShipwayClient`` (one method per endpoint) for scripts and
CI jobs written in Python; the ``shipway`` command uses the same functions. Every
call that the API refuses raises ``ClientError``; ``wait_for_job(..., check=True)``
raises ``JobFailed`` with the worker's diagnosis when a build or rollout fails.
See docs/python-client.md.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

from shipway.client.api import ShipwayClient
from shipway.client.follow import Update, follow_job
from shipway.client.pack import pack_folder

Json = dict[str, Any]
ARCHIVE_TYPES = {".tgz": "application/gzip", ".gz": "application/gzip",
                 ".tar": "application/x-tar", ".zip": "application/zip"}  # fmt: skip


class JobEnd(TypedDict):
    """How a job ended (``wait_for_job``'s answer)."""

    job_id: str
    state: str  # succeeded | failed | cancelled
    failure_reason: str | None
    failure_diagnostics: dict[str, Any] | None
    result: dict[str, Any] | None


class JobFailed(Exception):
    """A followed job ended ``failed`` or ``cancelled``; ``end`` holds the diagnosis."""

    def __init__(self, end: JobEnd) -> None:
        self.end = end
        diagnostics = end.get("failure_diagnostics") or {}
        title = diagnostics.get("title") or diagnostics.get("description") or ""
        reason = end.get("failure_reason") or end["state"]
        super().__init__(f"job {end['job_id']} {end['state']}: {reason}: {title}".rstrip(": "))


def new_idempotency_key(prefix: str = "py") -> str:
    """A fresh ``Idempotency-Key``; keep it to retry a publish or promote safely."""
    return f"{prefix}-{secrets.token_hex(12)}"


def git_metadata(folder: Path) -> dict[str, str]:
    """Branch, commit, message, author and dirtiness of the git work tree holding ``folder``."""
    git = shutil.which("git")
    if git is None:
        return {}

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                [git, "-C", str(folder), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if run("rev-parse", "--is-inside-work-tree") != "true":
        return {}
    fields = {
        "git_hash": run("rev-parse", "HEAD"),
        "git_branch": run("rev-parse", "--abbrev-ref", "HEAD"),
        "git_message": run("log", "-1", "--format=%B"),
        "author_name": run("log", "-1", "--format=%an"),
        "author_email": run("log", "-1", "--format=%ae"),
    }
    if fields["git_branch"] == "HEAD":  # a detached HEAD (as CI checks out) names no branch
        fields["git_branch"] = None
    status = run("status", "--porcelain", "--", ".")
    found = {k: v[:255] if k != "git_message" else v[:10_000] for k, v in fields.items() if v}
    if found and status is not None:
        found["is_dirty"] = "true" if status else "false"
    return found


def _form(metadata: Mapping[str, str | int | bool | None]) -> dict[str, str]:
    """Form fields as the API reads them (booleans ``true``/``false``; ``None`` left out)."""
    return {
        key: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for key, value in metadata.items()
        if value is not None
    }


def publish(
    client: ShipwayClient,
    *,
    deployment_id: str,
    source: str | Path,
    metadata: Mapping[str, str | int | bool | None] | None = None,
    git: bool = True,
    promote_to: str | None = None,
    idempotency_key: str | None = None,
) -> Json:
    """Upload a folder (packed as tar.gz, ``.git`` and ``.shipwayignore`` left out) or an
    archive file (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``) as a new version.

    ``metadata`` holds the provenance fields (``git_branch``, ``git_hash``,
    ``git_message``, ``is_dirty``, ``author_name``, ``author_email``, ``branch_id``, …)
    and runtime overrides (``runtime_port``, ``runtime_command``, ``health_check_path``);
    with ``git`` (the default) a folder inside a git work tree fills the git fields first.
    Returns the 202 answer ``{"version": {...}, "job": {...}}``: wait for ``job["id"]``.
    """
    path = Path(source)
    form = git_metadata(path.resolve()) if git and path.is_dir() else {}
    form.update(_form({**(metadata or {}), "promote_to": promote_to}))
    key = idempotency_key or new_idempotency_key()
    if path.is_dir():
        packed = pack_folder(path)
        archive, filename, media = packed.file, "source.tar.gz", "application/gzip"
    elif path.is_file():
        archive, filename = path.open("rb"), path.name
        media = ARCHIVE_TYPES.get(path.suffix.lower(), "application/octet-stream")
    else:
        raise FileNotFoundError(f"{path} is neither a folder nor an archive file")
    with archive:
        return client.publish(
            deployment_id=deployment_id,
            archive=archive,
            form=form,
            idempotency_key=key,
            filename=filename,
            media_type=media,
        )


def canary_strategy(
    steps: Sequence[tuple[int, float | None]],
    *,
    analysis_interval: float | None = None,
    max_error_rate: float | None = None,
    min_requests: int | None = None,
) -> Json:
    """A canary strategy for ``promote``: ``[(10, 30), (50, 60)]`` is 10 % for 30 s, then
    50 % for 60 s, then everything; analysis fields left ``None`` take the server's
    defaults."""
    parsed: list[Json] = []
    for weight, pause in steps:
        if not 1 <= weight <= 100:
            raise ValueError(f"canary weight {weight} is not between 1 and 100")
        parsed.append({"weight": weight} if pause is None else
                      {"weight": weight, "pause_seconds": pause})  # fmt: skip
    strategy: Json = {"type": "canary", "steps": parsed}
    analysis = {
        "interval_seconds": analysis_interval,
        "max_error_rate": max_error_rate,
        "min_requests": min_requests,
    }
    if any(v is not None for v in analysis.values()):
        strategy["analysis"] = {k: v for k, v in analysis.items() if v is not None}
    return strategy


def promote(
    client: ShipwayClient,
    *,
    version_id: str,
    environment: str = "production",
    canary: Json | None = None,
    supersede: bool = False,
    deployment_id: str | None = None,
    idempotency_key: str | None = None,
) -> Json:
    """Release a ready version to ``environment``, all at once or as a ``canary``
    (``canary_strategy(...)``). Returns ``{"release": {...}, "job": {...}}``."""
    if deployment_id is None:
        deployment_id = str(client.get_version(version_id=version_id)["deployment_id"])
    return client.promote(
        deployment_id=deployment_id,
        version_id=version_id,
        environment=environment,
        strategy=canary,
        supersede=supersede,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def rollback(
    client: ShipwayClient,
    *,
    deployment_id: str,
    environment: str = "production",
    to_version_id: str | None = None,
    idempotency_key: str | None = None,
) -> Json:
    """Roll ``environment`` back to the previous retained version (or ``to_version_id``).
    Returns ``{"release": {...}, "job": {...}}``."""
    return client.rollback(
        deployment_id=deployment_id,
        environment=environment,
        to_version_id=to_version_id,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def wait_for_job(
    client: ShipwayClient,
    *,
    job_id: str,
    on_update: Callable[[Update], None] | None = None,
    check: bool = False,
) -> JobEnd:
    """Block until the job ends (following its event stream, polling as a fallback).

    ``on_update`` sees each phase, progress, build log line and state change as it
    happens. With ``check``, a job that did not succeed raises ``JobFailed``.
    """
    end = cast(JobEnd, follow_job(client, job_id=job_id, on_update=on_update or _ignore))
    if check and end["state"] != "succeeded":
        raise JobFailed(end)
    return end


def _ignore(_update: Update) -> None:
    return None
