"""Push a built image to the configured registry, so that every node can pull it by digest.

Retried with backoff (a registry restarting, a dropped connection); if it still fails,
the publish fails with ``image_push_failed`` and a diagnosis, never with a version whose
image no node can pull.
"""

from __future__ import annotations

from typing import Any

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shipway.catalog.models import Version
from shipway.jobs.context import JobContext, JobFailed
from shipway.runtime.base import Runtime, RuntimeFailure

PUSH_ATTEMPTS = 4


def repository_of(registry: str, version: Version) -> str:
    """``<registry>/shipway/<deployment id>``: one repository per deployment."""
    return f"{registry.rstrip('/')}/shipway/{version.deployment_id}"


def push_to_registry(
    ctx: JobContext, *, runtime: Runtime, image: str, registry: str, version: Version
) -> str:
    """Push ``image``; its ``repository@sha256:…`` reference, or JobFailed(image_push_failed)."""
    repository = repository_of(registry, version)
    tag = f"v{version.version_number}"
    ctx.phase("push", registry=registry, repository=repository, tag=tag)
    attempts: list[str] = []

    def push() -> str:
        ctx.checkpoint()
        try:
            return runtime.push_image(image, repository=repository, tag=tag)
        except RuntimeFailure as failure:
            attempts.append(failure.message)
            ctx.progress(attempt=len(attempts), error=failure.message)
            raise

    try:
        for attempt in Retrying(
            retry=retry_if_exception_type(RuntimeFailure),
            stop=stop_after_attempt(PUSH_ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=4),
            reraise=False,
        ):
            with attempt:
                return push()
    except RetryError:
        pass
    raise JobFailed("image_push_failed", _diagnostics(registry, repository, tag, attempts))


def _diagnostics(registry: str, repository: str, tag: str, attempts: list[str]) -> dict[str, Any]:
    return {
        "title": "Image push failed",
        "description": (
            f"The image was built, but pushing it to the registry {registry} failed "
            f"{len(attempts)} time(s): {attempts[-1] if attempts else 'no answer'}. "
            "Nodes pull images from that registry, so the version cannot run."
        ),
        "action": (
            f"Check that the registry at {registry} is up and reachable from the build "
            "engine (and trusted by it: insecure-registries for plain HTTP), then publish again."
        ),
        "evidence": {"repository": repository, "tag": tag, "attempts": attempts},
    }
