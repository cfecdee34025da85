"""Push an image from a Docker engine to a registry and read back its digest."""

from __future__ import annotations

import docker
import docker.errors
import requests

from shipway.runtime.base import RuntimeFailure


def push_image(client: docker.DockerClient, reference: str, *, repository: str, tag: str) -> str:
    """Tag ``reference`` as ``repository:tag`` on the engine, push it, return
    ``repository@sha256:…``; RuntimeFailure("image_push_failed") on any refusal."""
    try:
        client.api.tag(reference, repository, tag)
        digest = None
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            if line.get("error"):
                raise RuntimeFailure(
                    "image_push_failed",
                    f"the registry refused {repository}:{tag}: {line['error']}",
                    error=str(line["error"]),
                )
            digest = (line.get("aux") or {}).get("Digest") or digest
    except docker.errors.APIError as error:
        raise RuntimeFailure(
            "image_push_failed",
            f"could not push {repository}:{tag}: {error.explanation or error}",
            error=str(error.explanation or error),
        ) from None
    except (requests.exceptions.RequestException, OSError) as error:
        raise RuntimeFailure(
            "image_push_failed", f"could not push {repository}:{tag}: {error}", error=str(error)
        ) from None
    if not digest:
        raise RuntimeFailure(
            "image_push_failed", f"the registry named no digest for {repository}:{tag}"
        )
    return f"{repository}@{digest}"
