"""The rollback window: pin versions, and garbage-collect images that left it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from shipway.catalog.models import Release, Version
from shipway.config import get_settings
from shipway.ids import utcnow
from shipway.jobs.periodic import periodic
from shipway.registry import client as registry
from shipway.runtime.base import Runtime
from shipway.states import record_event

log = logging.getLogger(__name__)
HOLDS_IMAGE = ("DEPLOYING", "ACTIVE", "UNHEALTHY", "DRAINING")


def set_pinned(session: Session, *, version: Version, pinned: bool, actor: str) -> Version:
    """Pin (keep its image for rollback indefinitely) or unpin a version."""
    if version.pinned != pinned:
        version.pinned = pinned
        record_event(
            session,
            workspace_id=version.workspace_id,
            subject_type="version",
            subject_id=version.id,
            from_state=version.state,
            to_state=version.state,
            reason="pinned for rollback" if pinned else "unpinned",
            actor=actor,
            deployment_id=version.deployment_id,
        )
    return version


@dataclass
class CollectReport:
    """Images the collector removed (and the versions it kept, with why)."""

    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    deleted_from_registry: list[str] = field(default_factory=list)
    registry_gc: bool = False  # whether the registry's garbage collection ran


def _expired(session: Session) -> list[Version]:
    """Archived versions whose every release left the rollback window and that hold no traffic."""
    now = utcnow()
    still_retained = exists().where(
        Release.version_id == Version.id,
        Release.deployed_at.is_not(None),
        (Release.image_expires_at.is_(None)) | (Release.image_expires_at > now),
    )
    serving = exists().where(Release.version_id == Version.id, Release.status.in_(HOLDS_IMAGE))
    return list(
        session.scalars(
            select(Version).where(
                Version.state == "archived",
                Version.runtime_image.is_not(None),
                ~still_retained,
                ~serving,
            )
        ).all()
    )


def _newest_archived(session: Session, deployment_id: str, keep: int) -> set[str]:
    rows = session.scalars(
        select(Version.id)
        .where(Version.deployment_id == deployment_id, Version.state == "archived")
        .order_by(Version.version_number.desc())
        .limit(keep)
    ).all()
    return set(rows)


def collect_images(session: Session, *, runtime: Runtime) -> CollectReport:
    """Remove images of versions past their window; never a serving, pinned or newest-K one."""
    report = CollectReport()
    keep = get_settings().keep_last_versions
    newest: dict[str, set[str]] = {}
    for version in _expired(session):
        if version.pinned:
            report.kept[version.id] = "pinned"
            continue
        if version.deployment_id not in newest:
            newest[version.deployment_id] = _newest_archived(session, version.deployment_id, keep)
        if version.id in newest[version.deployment_id]:
            report.kept[version.id] = f"among the newest {keep} archived versions"
            continue
        image = str(version.runtime_image)
        where = _remove_everywhere(version.id, image, runtime=runtime, report=report)
        if not where:
            continue
        report.removed.append(image)
        record_event(
            session,
            workspace_id=version.workspace_id,
            subject_type="version",
            subject_id=version.id,
            from_state=version.state,
            to_state=version.state,
            reason=f"image {image} removed ({' and '.join(where)}): past its rollback window",
            actor="image-gc",
            deployment_id=version.deployment_id,
        )
    if report.removed:
        log.info("image gc removed %d image(s)", len(report.removed))
    if report.deleted_from_registry:
        report.registry_gc = registry.collect_garbage(settings=get_settings()) is not None
    return report


def _remove_everywhere(
    version_id: str, image: str, *, runtime: Runtime, report: CollectReport
) -> list[str]:
    """Remove an expired image from the engine and from its registry; where it was."""
    where = []
    if runtime.inspect_image(image) is not None:
        runtime.remove_image(image)
        where.append("engine")
    try:
        if registry.delete_image(image, settings=get_settings()):
            report.deleted_from_registry.append(image)
            where.append("registry")
    except registry.RegistryError as error:  # kept in the registry; tried again next pass
        log.warning("image gc: %s", error)
        report.kept[version_id] = f"registry: {error}"
    return where


def image_expired(session: Session, *, version: Version) -> bool:
    """Whether every release of this version is past its rollback window (and it is not pinned)."""
    if version.pinned:
        return False
    latest = session.scalar(
        select(func.max(Release.image_expires_at)).where(Release.version_id == version.id)
    )
    return latest is not None and latest <= utcnow()


@periodic(
    "image-gc",
    interval=lambda settings: settings.gc_interval_seconds,
    lane="relay",
    first_run_delayed=True,
    order=20,
)
def collect_once() -> CollectReport:
    """One garbage-collection pass on the configured database and engine."""
    from shipway.db import transaction
    from shipway.runtime import get_runtime

    with transaction() as session:
        return collect_images(session, runtime=get_runtime())
