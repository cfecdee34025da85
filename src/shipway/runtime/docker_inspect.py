"""A replica as ``docker inspect`` describes a container, and where it is reached.

Either at its published port (on ``SHIPWAY_REPLICA_ADDRESS`` when the engine bound every
interface), or, with ``SHIPWAY_REPLICA_NETWORK``, at its own address on that Docker network
and its container port: the way shipway reaches replicas when it runs in containers on
that network itself (docker-compose.yml).
"""

from __future__ import annotations

from typing import Any

from shipway.config import get_settings
from shipway.runtime.base import Replica

WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


def replica_of(attrs: dict[str, Any]) -> Replica:
    """The Replica of one container's inspect data."""
    state = attrs.get("State") or {}
    host_port, address = _on_network(attrs) or _published(attrs)
    return Replica(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        status=str(state.get("Status", "unknown")),
        exit_code=state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None,
        restart_count=int(attrs.get("RestartCount") or 0),
        host_port=host_port,
        address=address,
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
    )


def running_replica_of_listing(summary: dict[str, Any]) -> Replica:
    """The Replica of a running container from its entry in a listing (``docker ps``): no
    inspect. A listing has no restart count nor OOM flag: they read 0 and False."""
    ports = [p for p in summary.get("Ports") or [] if p.get("Type", "tcp") == "tcp"]
    host_port, address = _listed_on_network(summary, ports) or _listed_published(ports)
    return Replica(
        id=summary["Id"],
        name=str((summary.get("Names") or [""])[0]).lstrip("/"),
        labels=dict(summary.get("Labels") or {}),
        status="running",
        exit_code=None,
        restart_count=0,
        host_port=host_port,
        address=address,
    )


def _listed_published(ports: list[dict[str, Any]]) -> tuple[int | None, str | None]:
    for port in ports:
        if port.get("PublicPort"):
            return int(port["PublicPort"]), _reachable(str(port.get("IP") or ""))
    return None, None


def _listed_on_network(
    summary: dict[str, Any], ports: list[dict[str, Any]]
) -> tuple[int | None, str | None] | None:
    private = sorted(int(p["PrivatePort"]) for p in ports if p.get("PrivatePort"))
    return _network_endpoint(summary, private)


def _published(attrs: dict[str, Any]) -> tuple[int | None, str | None]:
    ports = ((attrs.get("NetworkSettings") or {}).get("Ports")) or {}
    for bindings in ports.values():
        for binding in bindings or []:
            if binding.get("HostPort"):
                return int(binding["HostPort"]), _reachable(str(binding.get("HostIp") or ""))
    return None, None


def _on_network(attrs: dict[str, Any]) -> tuple[int | None, str | None] | None:
    """(container port, address on the replica network), or None without that network."""
    exposed = sorted(((attrs.get("Config") or {}).get("ExposedPorts") or {}).keys())
    return _network_endpoint(
        attrs, [int(key.split("/")[0]) for key in exposed if key.endswith("/tcp")]
    )


def _network_endpoint(
    container: dict[str, Any], ports: list[int]
) -> tuple[int | None, str | None] | None:
    """(the first of ``ports``, the container's address on the replica network) from an
    inspect or a listing entry (both have ``NetworkSettings.Networks``); None without that
    network setting."""
    network = get_settings().replica_network
    if not network:
        return None
    networks = ((container.get("NetworkSettings") or {}).get("Networks")) or {}
    address = str((networks.get(network) or {}).get("IPAddress") or "")
    if not address or not ports:
        return None, None  # stopped (no address) or nothing to reach
    return ports[0], address


def _reachable(host_ip: str) -> str:
    """The address a published port is reached on: its binding's, or the configured one
    when the engine bound every interface."""
    return get_settings().replica_address if host_ip in WILDCARD_ADDRESSES else host_ip
