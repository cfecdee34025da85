"""The Runtime protocol: what shipway needs from a container engine."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shipway.runtime.hardening import Hardening

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


class RuntimeFailure(Exception):
    """The engine refused to run something; ``reason`` is a failure_reason code."""

    def __init__(self, reason: str, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.reason, self.message, self.evidence = reason, message, evidence


class Runtime(Protocol):
    """A container engine: one Docker engine, or a Docker Swarm."""

    endpoints_move: bool
    """Whether a running replica can reappear at another endpoint on its own (a cluster
    reschedules it to another node); the router watch then follows it."""

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

    def push_image(self, reference: str, *, repository: str, tag: str) -> str:
        """Push a built image to ``repository:tag`` in a registry; returns the reference
        every node pulls, ``repository@sha256:…``. RuntimeFailure("image_push_failed")
        if the registry refuses it or cannot be reached."""
        ...

    def run_replica(self, spec: ReplicaSpec) -> Replica:
        """Create and start a replica; its port is published on 127.0.0.1 (random host port).

        Idempotent by name: a container with ``spec.name`` is reused, not duplicated.
        Raises RuntimeFailure(reason, message) when it cannot be created or started.
        """
        ...

    def replicas(self, selector: dict[str, str]) -> list[Replica]:
        """Every container (running or not) whose labels include ``selector``."""
        ...

    def replicas_by_label(self, key: str, values: Collection[str]) -> dict[str, list[Replica]]:
        """The replicas of many label values in one lookup: ``{value: its replicas}`` for
        every value asked (empty when none). A running replica may come from the engine's
        listing alone: its ``restart_count`` and ``oom_killed`` then read 0 and False
        (``inspect_replica`` has them)."""
        ...

    def inspect_replica(self, container_id: str) -> Replica | None:
        """One container, or None if it is gone."""
        ...

    def stopped_replicas(self, label: str) -> list[Replica]:
        """Every container carrying ``label`` (any value) that is not running."""
        ...

    def start_replica(self, container_id: str) -> Replica | None:
        """Start a stopped replica again (same name, labels and command; its host port may
        change); None if it is gone."""
        ...

    def logs(self, container_id: str, *, tail: int = 20) -> list[str]:
        """The last lines a container printed."""
        ...

    def stop_replica(self, container_id: str, *, timeout_seconds: float) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after the timeout)."""
        ...

    def remove_replica(self, container_id: str) -> None:
        """Remove a container (forcefully); no error if it is already gone."""
        ...


@dataclass
class ReplicaSpec:
    """What to run: one replica of a version's image."""

    image: str
    name: str
    labels: dict[str, str]
    container_port: int
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)  # config, secrets among them
    memory_mb: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    hardening: Hardening | None = None  # privileges (runtime/hardening.py); None: image's
    network: str | None = None
    constraints: list[str] = field(default_factory=list)  # placement on a cluster, e.g.
    # "node.labels.zone==a" (Swarm); one engine ignores them


@dataclass(frozen=True)
class Endpoint:
    """Where a replica is reachable from shipway and the router: an address and a port."""

    address: str
    port: int

    def url(self, path: str = "") -> str:
        """``http://address:port`` + ``path`` (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{path}"


@dataclass
class Replica:
    """A running (or exited) replica container as the engine reports it.

    ``address`` and ``host_port`` say where the engine publishes the replica's port:
    the runtime reports an address its callers can reach (a node's address on a
    cluster, the loopback address on one engine), never a wildcard.
    """

    id: str
    name: str
    labels: dict[str, str]
    status: str  # created | running | restarting | exited | dead | …
    exit_code: int | None
    restart_count: int
    host_port: int | None
    oom_killed: bool = False
    error: str = ""
    address: str | None = None

    @property
    def running(self) -> bool:
        """Whether the container is up."""
        return self.status == "running"

    @property
    def endpoint(self) -> Endpoint | None:
        """Where to reach it, or None while it publishes no port (not started, or gone)."""
        if self.address is None or not self.host_port:
            return None
        return Endpoint(address=self.address, port=self.host_port)


def group_by_label(
    replicas: Iterable[Replica], key: str, values: Collection[str]
) -> dict[str, list[Replica]]:
    """``{value: the replicas labelled key=value}`` for every value, the others left out."""
    found: dict[str, list[Replica]] = {value: [] for value in values}
    for replica in replicas:
        value = replica.labels.get(key)
        if value is not None and value in found:
            found[value].append(replica)
    return found
