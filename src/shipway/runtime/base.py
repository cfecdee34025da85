"""The Runtime protocol: what shipway needs from a container engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

LABEL_PREFIX = "shipway."


def labels(**values: str) -> dict[str, str]:
    """``{"shipway.<key>": value}`` for every non-empty value."""
    return {f"{LABEL_PREFIX}{key}": value for key, value in values.items() if value}


@dataclass
class BuildOutcome:
    """How one image build ended."""

    ok: bool
    image_id: str | None = None
    error: str | None = None
    timed_out: bool = False
    stopped: bool = False
    failing_step: str | None = None
    log_tail: list[str] = field(default_factory=list)
    build_containers: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ImageInfo:
    """What shipway records of a built image."""

    id: str
    tags: list[str]
    size: int
    layers: list[str]
    env: list[str]
    exposed_ports: list[str]
    labels: dict[str, str]
    created: str

    def manifest(self) -> dict[str, Any]:
        """JSON-able facts of the image."""
        return {
            "image_id": self.id,
            "tags": self.tags,
            "size": self.size,
            "layers": self.layers,
            "env": self.env,
            "exposed_ports": self.exposed_ports,
            "created": self.created,
        }


class Runtime(Protocol):
    """A container engine (Docker today; Swarm and Kubernetes later)."""

    def build_image(
        self,
        *,
        context: Path,
        tag: str,
        labels: dict[str, str],
        timeout_seconds: float,
        on_line: Callable[[str], None],
        should_stop: Callable[[], bool] = ...,
    ) -> BuildOutcome:
        """Build ``context`` (with its Dockerfile) into ``tag``; never raises for build errors."""
        ...

    def inspect_image(self, reference: str) -> ImageInfo | None:
        """Facts of an image, or None if it does not exist."""
        ...

    def remove_image(self, reference: str) -> None:
        """Remove an image if present."""
        ...
