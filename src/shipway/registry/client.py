"""Delete images from a Docker registry and run its garbage collection.

Deleting a manifest (``DELETE /v2/<name>/manifests/<digest>``) needs the registry's
``storage.delete.enabled``; the layers it alone used are freed by the registry's
garbage collection, an offline command of the registry host that shipway runs when
``SHIPWAY_REGISTRY_GC_COMMAND`` is set (e.g. ``docker-registry garbage-collect
--delete-untagged /etc/docker/registry/config.yml``).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass

import httpx

from shipway.config import Settings

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 10.0
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


class RegistryError(Exception):
    """The registry refused a deletion or could not be reached."""


@dataclass(frozen=True)
class ImageReference:
    """``host[:port]/name@sha256:…`` split into the parts the HTTP API takes."""

    host: str
    name: str
    digest: str

    @classmethod
    def parse(cls, reference: str) -> ImageReference | None:
        """The parts of a by-digest reference, or None for a tag or a local image."""
        location, at, digest = reference.partition("@")
        host, slash, name = location.partition("/")
        if not at or not slash or not digest.startswith("sha256:"):
            return None
        if "." not in host and ":" not in host and host != "localhost":
            return None  # "shipway/app@sha256:…": Docker Hub style, not a registry of ours
        return cls(host=host, name=name, digest=digest)


def api_base(settings: Settings, host: str) -> str:
    """The registry's API address: ``SHIPWAY_REGISTRY_API_URL`` or ``https://<host>``."""
    return (settings.registry_api_url or f"https://{host}").rstrip("/")


def delete_image(reference: str, *, settings: Settings) -> bool:
    """Delete a by-digest image from its registry; True if it was there (False if not ours
    or already gone). RegistryError if the registry refuses or cannot be reached."""
    parsed = ImageReference.parse(reference)
    if parsed is None:
        return False
    url = f"{api_base(settings, parsed.host)}/v2/{parsed.name}/manifests/{parsed.digest}"
    try:
        answer = httpx.delete(url, headers={"Accept": MANIFEST_TYPES}, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        raise RegistryError(f"registry {parsed.host} unreachable: {error}") from None
    if answer.status_code == 404:
        return False
    if answer.status_code not in (200, 202):
        raise RegistryError(
            f"registry {parsed.host} refused to delete {parsed.name}@{parsed.digest}: "
            f"HTTP {answer.status_code} {answer.text[:200]}"
        )
    return True


def collect_garbage(*, settings: Settings) -> str | None:
    """Run ``SHIPWAY_REGISTRY_GC_COMMAND`` (if set); its output, or None when unset."""
    if not settings.registry_gc_command:
        return None
    done = subprocess.run(
        shlex.split(settings.registry_gc_command),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RegistryError(
            f"registry garbage collection exited {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return done.stdout
