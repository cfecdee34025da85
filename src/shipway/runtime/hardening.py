"""How replicas are confined: privileges per version kind, and default resource limits.

Both runtimes translate a ``Hardening`` the same way (``docker_runtime`` into a host
config, ``swarm_runtime`` into a ContainerSpec); what a kind gets is decided here, once:

- ``static`` (busybox httpd on an unprivileged port, files copied world-readable by the
  build): user ``65534:65534`` (nobody), every capability dropped, read-only root
  filesystem with a small tmpfs on ``/tmp``, no-new-privileges.
- ``container`` (the user's Dockerfile, e.g. a Python app): the image's own user (shipway
  cannot know whether its files allow another), every capability dropped but the few an
  image starting as root needs to set itself up and step down to its user (CHOWN,
  DAC_OVERRIDE, FOWNER, SETGID, SETUID) and NET_BIND_SERVICE (ports below 1024),
  no-new-privileges; a writable root filesystem (apps write caches, pid files, uploads).

``SHIPWAY_REPLICA_HARDENING=false`` turns the privilege part off (the image's defaults:
Docker's default capability set, writable root, the image's user); the limits
(``SHIPWAY_REPLICA_MEMORY_MB``, ``_CPUS``, ``_PIDS_LIMIT``) stay, each 0 for none, and a
deployment's own ``resources`` override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipway.config import get_settings

NOBODY = "65534:65534"
TMPFS_MB = 16
CONTAINER_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE")


@dataclass(frozen=True)
class Hardening:
    """Privileges of a replica (what a runtime sets besides resources)."""

    no_new_privileges: bool = True
    cap_add: tuple[str, ...] = ()  # every other capability is dropped
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()  # writable in-memory folders (with a read-only root)
    user: str | None = None  # None: the image's USER


def hardening_for(kind: str) -> Hardening | None:
    """The privileges of a replica of a ``kind`` version; None when hardening is off."""
    if not get_settings().replica_hardening:
        return None
    if kind == "static":
        return Hardening(read_only=True, tmpfs=("/tmp",), user=NOBODY)
    return Hardening(cap_add=CONTAINER_CAPABILITIES)


def docker_confinement(hardening: Hardening | None) -> dict[str, Any]:
    """``create_host_config`` arguments of ``hardening`` (None: Docker's defaults)."""
    if hardening is None:
        return {}
    tmpfs = {path: f"rw,noexec,nosuid,size={TMPFS_MB}m" for path in hardening.tmpfs}
    return {
        "cap_drop": ["ALL"],
        "cap_add": list(hardening.cap_add) or None,
        "security_opt": ["no-new-privileges:true"] if hardening.no_new_privileges else None,
        "read_only": hardening.read_only or None,
        "tmpfs": tmpfs or None,
    }


def swarm_confinement(hardening: Hardening | None) -> dict[str, Any]:
    """``ContainerSpec`` arguments of ``hardening`` (None: the engine's defaults).

    A service cannot ask for no-new-privileges before API 1.44 (Docker 25; Debian's
    docker.io 20.10 speaks 1.41), so Swarm replicas go without it: with every capability
    dropped (an empty bounding set) a setuid binary still gains no capability, which is
    most of what the flag prevents. Capabilities (API 1.41), read-only root, user and a
    tmpfs mount are set as on one engine.
    """
    if hardening is None:
        return {}
    tmpfs = [
        {"Target": path, "Type": "tmpfs", "TmpfsOptions": {"SizeBytes": TMPFS_MB << 20}}
        for path in hardening.tmpfs
    ]
    return {
        "user": hardening.user,
        "cap_drop": ["ALL"],
        "cap_add": list(hardening.cap_add) or None,
        "read_only": hardening.read_only or None,
        "mounts": tmpfs or None,
    }


@dataclass(frozen=True)
class Limits:
    """Resource limits of one replica (None: unlimited)."""

    memory_mb: int | None
    cpus: float | None
    pids: int | None


def limits_for(resources: dict[str, object] | None) -> Limits:
    """A deployment's ``resources`` over the settings' defaults (0 in settings: none)."""
    settings = get_settings()
    given = resources or {}
    memory = given.get("memory_mb") or settings.replica_memory_mb or None
    cpus = given.get("cpus") or settings.replica_cpus or None
    pids = given.get("pids_limit") or settings.replica_pids_limit or None
    return Limits(
        memory_mb=int(memory) if isinstance(memory, int | float) else None,
        cpus=float(cpus) if isinstance(cpus, int | float) else None,
        pids=int(pids) if isinstance(pids, int | float) else None,
    )
