"""Replica containers of a release: names, labels, scale up and tear down (idempotent)."""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shipway.catalog.models import Deployment, Release, Version
from shipway.jobs.context import JobFailed
from shipway.runtime.base import Replica, ReplicaSpec, Runtime, RuntimeFailure, labels
from shipway.runtime.hardening import hardening_for, limits_for

RELEASE_LABEL = "shipway.release"
REPLICA_LABEL = "shipway.replica"
MAX_PARALLEL_STARTS = 8


def replica_name(release_id: str, index: int) -> str:
    """Container name of replica ``index`` of a release (stable: retries reuse it)."""
    return f"sw-{release_id}-{index}"


@dataclass(frozen=True)
class Target:
    """What a release runs: image, port, command, resources, how many, its environment."""

    image: str
    port: int
    command: list[str] | None
    replicas: int
    memory_mb: int | None
    cpus: float | None
    placement: list[str]
    kind: str = "container"  # what runtime.hardening confines it by
    hardened: bool = True  # the deployment's choice (False: the image's defaults)
    pids_limit: int | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)  # secrets among them

    @classmethod
    def of(
        cls, *, version: Version, deployment: Deployment, env: dict[str, str] | None = None
    ) -> Target:
        """The target of ``version`` with the deployment's settings and config ``env``."""
        if not version.runtime_image:
            raise JobFailed(
                "image_pull_failed",
                {
                    "title": "Version has no image",
                    "description": f"Version {version.version_number} has no built image.",
                    "action": "Publish the source again and promote the new version.",
                    "evidence": {"version_id": version.id, "state": version.state},
                },
            )
        limits = limits_for(deployment.resources)  # the deployment's, else the defaults
        command = shlex.split(version.runtime_command) if version.runtime_command else None
        return cls(
            image=version.runtime_image,
            port=version.runtime_port or deployment.runtime_port,
            command=command,
            replicas=deployment.replicas,
            memory_mb=limits.memory_mb,
            cpus=limits.cpus,
            kind=version.kind,
            hardened=(deployment.settings or {}).get("hardened", True) is not False,
            pids_limit=limits.pids,
            placement=list((deployment.settings or {}).get("placement") or []),
            env=dict(env or {}),
        )


def release_labels(release: Release, index: int) -> dict[str, str]:
    """The labels that let shipway find a replica again from the engine alone."""
    return labels(
        deployment=release.deployment_id,
        version=release.version_id,
        environment=release.environment,
        release=release.id,
        replica=str(index),
        workspace=release.workspace_id,
    )


def scale_up(
    *, runtime: Runtime, release: Release, target: Target, retried: bool = True
) -> list[Replica]:
    """Ensure exactly ``target.replicas`` replicas of ``release`` exist and run.

    Existing containers (from a crashed earlier attempt) are found by name and
    reused; none is ever duplicated. When the job is ``retried``, containers of the
    release beyond the target (an earlier attempt with more replicas) are removed;
    a first attempt skips that listing, as no container of a new release exists yet.
    """
    specs = [
        ReplicaSpec(
            image=target.image,
            name=replica_name(release.id, index),
            labels=release_labels(release, index),
            container_port=target.port,
            command=target.command,
            env=target.env,
            memory_mb=target.memory_mb,
            cpus=target.cpus,
            pids_limit=target.pids_limit,
            hardening=hardening_for(target.kind) if target.hardened else None,
            constraints=target.placement,
        )
        for index in range(target.replicas)
    ]
    # The engine creates and starts containers concurrently: starting them one
    # after another would make a promote's scale phase grow with the replica count.
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_STARTS, len(specs) or 1)) as pool:
        outcomes = list(pool.map(lambda spec: _start(runtime, spec), specs))
    for outcome, spec in zip(outcomes, specs, strict=True):
        if isinstance(outcome, RuntimeFailure):
            raise JobFailed(outcome.reason, _runtime_diagnostics(outcome, spec))
    replicas = [outcome for outcome in outcomes if isinstance(outcome, Replica)]
    if not retried:
        return replicas
    wanted = {r.id for r in replicas}
    for extra in runtime.replicas({RELEASE_LABEL: release.id}):
        if extra.id not in wanted:
            runtime.remove_replica(extra.id)
    return replicas


def _start(runtime: Runtime, spec: ReplicaSpec) -> Replica | RuntimeFailure:
    try:
        return runtime.run_replica(spec)
    except RuntimeFailure as failure:
        return failure


def tear_down(*, runtime: Runtime, release_id: str, stop_timeout_seconds: float) -> int:
    """Stop and remove every container of a release; returns how many there were."""
    found = runtime.replicas({RELEASE_LABEL: release_id})
    for replica in found:
        if replica.running:
            runtime.stop_replica(replica.id, timeout_seconds=stop_timeout_seconds)
        runtime.remove_replica(replica.id)
    return len(found)


def _runtime_diagnostics(failure: RuntimeFailure, spec: ReplicaSpec) -> dict[str, object]:
    if failure.reason == "image_pull_failed":
        return {
            "title": "Image not available",
            "description": (
                f"The image {spec.image} is no longer on the engine (for example pruned after "
                "its rollback window)."
            ),
            "action": "Publish the source again, or restore the image, then promote.",
            "evidence": {"image": spec.image, **failure.evidence},
        }
    return {
        "title": "Replica could not be scheduled",
        "description": failure.message,
        "action": (
            "Check the engine's resources (memory, ports, networks) and the deployment's "
            "resources settings."
        ),
        "evidence": {
            "replica": spec.name,
            "image": spec.image,
            "memory_mb": spec.memory_mb,
            "cpus": spec.cpus,
            **failure.evidence,
        },
    }
