"""The publish job: build a version's source into an image and record the artifact."""

from __future__ import annotations

import shutil
from contextlib import suppress
from typing import Any

from sqlalchemy.orm import Session

from shipway.builds.context import prepare_static, static_command
from shipway.builds.diagnose import classify
from shipway.builds.push import push_to_registry
from shipway.catalog.machines import VERSION
from shipway.catalog.models import Deployment, Version
from shipway.config import get_settings
from shipway.errors import InvalidTransition, ShipwayError
from shipway.ids import utcnow
from shipway.jobs.context import JobCancelled, JobContext, JobFailed
from shipway.jobs.dispatch import Queued, dispatch
from shipway.jobs.handlers import compensator, handler
from shipway.jobs.models import Job
from shipway.releases.service import promote_version
from shipway.runtime import get_runtime
from shipway.runtime.base import labels
from shipway.sources.store import source_store
from shipway.states import record_event, transition


def image_tag(version: Version) -> str:
    """The image reference of a version: ``shipway/<deployment>:v<number>``."""
    return f"shipway/{version.deployment_id}:v{version.version_number}"


def _load(session: Session, job_id: str) -> tuple[Job, Version, Deployment]:
    job = session.get(Job, job_id)
    assert job is not None and job.version_id
    version = session.get(Version, job.version_id)
    assert version is not None
    deployment = session.get(Deployment, version.deployment_id)
    assert deployment is not None
    return job, version, deployment


def _start_building(ctx: JobContext) -> tuple[Job, Version, Deployment]:
    with ctx.session() as session, session.begin():
        job, version, deployment = _load(session, ctx.job_id)
        if version.state == "created":
            transition(
                session,
                VERSION,
                subject_id=version.id,
                from_state="created",
                to_state="building",
                reason=f"build started (attempt {ctx.attempt})",
                actor=ctx.owner,
                job_id=job.id,
            )
        elif version.state == "building":
            record_event(
                session,
                workspace_id=version.workspace_id,
                subject_type="version",
                subject_id=version.id,
                from_state="building",
                to_state="building",
                reason=f"build restarted from a clean state (attempt {ctx.attempt})",
                actor=ctx.owner,
                deployment_id=version.deployment_id,
                job_id=job.id,
            )
        return job, version, deployment


def _should_stop(ctx: JobContext) -> bool:
    try:
        ctx.checkpoint()
    except Exception:
        return True
    return False


@handler("publish", queue="builds")
def run_publish(ctx: JobContext) -> dict[str, Any]:
    """Build the version's image; ready with its artifact, or failed with a diagnosis."""
    settings = get_settings()
    with ctx.session() as session:
        _, version, _ = _load(session, ctx.job_id)
        if version.state in ("ready", "failed", "archived"):
            return {"version_id": version.id, "state": version.state, "skipped": True}
    ctx.phase("build", attempt=ctx.attempt)
    _, version, deployment = _start_building(ctx)
    store = source_store()
    tag = image_tag(version)
    port = version.runtime_port or deployment.runtime_port
    workdir = settings.data_dir.resolve() / "builds" / version.id
    image_labels = labels(
        deployment=version.deployment_id,
        version=version.id,
        workspace=version.workspace_id,
        version_number=str(version.version_number),
    )
    build_labels = image_labels
    try:  # the work folder goes whatever happens (a full disk may stop its copy half-way)
        if version.kind == "static":
            context = prepare_static(
                tree=store.tree(version.id),
                workdir=workdir,
                base_image=settings.base_image,
                port=port,
                labels=image_labels,
            )
            build_labels = {}  # in the generated Dockerfile: one build step, not one per label
        else:
            context = store.tree(version.id)
        with store.log_writer(version.id, truncate=True) as log:
            log.write(
                f"shipway: building version {version.version_number} of {deployment.name} "
                f"({version.kind}) as {tag}, attempt {ctx.attempt}, at {utcnow().isoformat()}\n"
            )
            outcome = get_runtime().build_image(
                context=context,
                tag=tag,
                labels=build_labels,
                timeout_seconds=settings.build_timeout_seconds,
                on_line=lambda line: print(line, file=log),
                should_stop=lambda: _should_stop(ctx),
            )
            log.write(
                f"shipway: build {'succeeded' if outcome.ok else 'failed'} "
                f"in {outcome.seconds:.1f}s\n"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome.stopped:
        ctx.checkpoint()  # raises JobCancelled or LeaseLost
        raise JobCancelled(ctx.job_id)
    if not outcome.ok:
        reason, diagnostics = classify(outcome, timeout_seconds=settings.build_timeout_seconds)
        raise JobFailed(reason, diagnostics)
    image = tag
    if settings.registry:
        image = push_to_registry(
            ctx, runtime=get_runtime(), image=tag, registry=settings.registry, version=version
        )
    return _record_artifact(ctx, tag=tag, image=image, image_id=str(outcome.image_id), port=port)


def _promote_when_ready(ctx: JobContext, *, environment: str) -> list[Queued]:
    """Queue the promote asked for at publish time; a refusal is recorded, not fatal."""
    try:
        with ctx.session() as session, session.begin():
            job, version, _ = _load(session, ctx.job_id)
            result = promote_version(
                session,
                workspace_id=version.workspace_id,
                deployment_id=version.deployment_id,
                version_id=version.id,
                environment=environment,
                strategy=job.params.get("strategy") or {"type": "all_at_once"},
                actor=job.actor,
            )
            return [Queued.of(result.job)]
    except ShipwayError as refusal:
        with ctx.session() as session, session.begin():
            job, version, _ = _load(session, ctx.job_id)
            record_event(
                session,
                workspace_id=version.workspace_id,
                subject_type="version",
                subject_id=version.id,
                from_state=version.state,
                to_state=version.state,
                reason=f"promote_to {environment} refused: {refusal.message}",
                actor=ctx.owner,
                deployment_id=version.deployment_id,
                job_id=job.id,
                data={"code": refusal.code, **refusal.details},
            )
        return []


def _record_artifact(
    ctx: JobContext, *, tag: str, image: str, image_id: str, port: int
) -> dict[str, Any]:
    """Mark the version ready with what it runs: ``image`` (the tag, or the registry's
    ``repository@sha256:…``) and its manifest."""
    info = get_runtime().inspect_image(image_id)
    if info is None:
        raise JobFailed(
            "build_failed",
            {
                "title": "Built image disappeared",
                "description": (
                    f"The build reported image {image_id}, but the engine no longer has it."
                ),
                "action": "Publish again; check that no image pruning runs during builds.",
                "evidence": {"image_id": image_id, "tag": tag},
            },
        )
    ctx.phase("record", image_id=info.id)
    follow_up: list[Queued] = []
    with ctx.session() as session, session.begin():
        job, version, deployment = _load(session, ctx.job_id)
        manifest: dict[str, Any] = {"image": info.manifest()}
        if version.kind == "static":
            manifest["files"] = (job.params.get("source_manifest") or {}).get("files", [])
        transition(
            session,
            VERSION,
            subject_id=version.id,
            from_state="building",
            to_state="ready",
            reason=f"built {image} ({info.id[:19]})",
            actor=ctx.owner,
            job_id=job.id,
            values={
                "artifact_sha256": info.id,
                "runtime_image": image,
                "artifact_manifest": manifest,
                "runtime_port": port,
                "runtime_command": version.runtime_command
                or (static_command(port) if version.kind == "static" else None),
                "health_check_path": version.health_check_path or deployment.health_check_path,
            },
        )
    promote_to = job.params.get("promote_to")
    if promote_to:
        follow_up = _promote_when_ready(ctx, environment=promote_to)
    if follow_up:
        dispatch(follow_up)
    return {
        "image": image,
        "image_id": info.id,
        "promote_job_id": follow_up[0][0] if follow_up else None,
    }


@compensator("publish")
def fail_version(
    session: Session, job: Job, reason: str, diagnostics: dict[str, Any] | None
) -> None:
    """A publish that ended badly leaves its version ``failed`` with the diagnosis."""
    if not job.version_id:
        return
    version = session.get(Version, job.version_id, populate_existing=True)
    if version is None or version.state not in ("created", "building"):
        return
    with suppress(InvalidTransition):
        transition(
            session,
            VERSION,
            subject_id=version.id,
            from_state=version.state,
            to_state="failed",
            reason=reason,
            actor=job.actor,
            job_id=job.id,
            values={"failure_reason": reason, "failure_diagnostics": diagnostics},
        )
