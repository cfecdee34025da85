"""A version as the API shows it: its row, summary and lifecycle in one environment."""

from __future__ import annotations

from typing import Any

from shipway.catalog.models import Version
from shipway.versions.schemas import (
    Lifecycle,
    ReleaseRead,
    VersionFull,
    VersionLifecycle,
    VersionSummary,
)


def lifecycle(version: Version, releases: list[ReleaseRead], environment: str) -> dict[str, Any]:
    """The lifecycle fields of a version in ``environment`` (its release there, if any)."""
    current = next((r for r in releases if r.environment == environment), None)
    if current is None:
        return Lifecycle(  # never released here: FAILED if its build failed, else null
            environment=environment,
            status="FAILED" if version.state == "failed" else None,
            failure_reason=version.failure_reason,
            failure_diagnostics=version.failure_diagnostics,
            updated_at=version.updated_at,
        ).model_dump()
    fields = set(Lifecycle.model_fields) - {"environment"}
    return {"environment": environment, **current.model_dump(include=fields)}


def version_full(version: Version, *, releases: list[ReleaseRead], environment: str) -> VersionFull:
    """The full row of a version with its lifecycle in ``environment``."""
    summary = VersionSummary.model_validate(version).model_dump()
    row = {
        name: getattr(version, name) for name in VersionFull.model_fields if hasattr(version, name)
    }
    return VersionFull.model_validate(
        {
            **row,
            **summary,
            **lifecycle(version, releases, environment),
            "build_failure_reason": version.failure_reason,
            "build_failure_diagnostics": version.failure_diagnostics,
            "releases": releases,
        }
    )


def version_lifecycle(
    version: Version, *, releases: list[ReleaseRead], environment: str
) -> VersionLifecycle:
    """The seed get-version shape: lifecycle status, replicas, failure and rollback fields."""
    row = {
        name: getattr(version, name)
        for name in VersionLifecycle.model_fields
        if hasattr(version, name)
    }
    return VersionLifecycle.model_validate(
        {**row, **lifecycle(version, releases, environment), "releases": releases}
    )
