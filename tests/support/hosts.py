"""shipway's own processes on several "hosts" of the test cluster.

A host here is a network namespace of tests/support/cluster.py (``swynN``, the node's
address 10.87.0.N) or the root namespace (10.87.0.254), plus a UTS namespace of its own,
so ``socket.gethostname()`` (recorded in job lease owners, event actors and the worker
registry) names the host. Processes enter with ``nsenter --net`` as the harness's dockerd
does (``ip netns exec`` would remount /sys); the filesystem and the process table stay
shared, which stands for shared storage (NFS) of the data dir — and is why a test must
check by other means (the HAProxy process's network namespace, say) that host-local
things stay on their host.

Each host reaches PostgreSQL, Redis and the registry at the cluster's root address, as
another machine of the network would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.support.cluster import NO_PROXY_ENV
from tests.support.processes import Service, Supervisor, child_env, executable


@dataclass(frozen=True)
class Host:
    """Where a process runs: ``netns`` (None: the root namespace) under ``hostname``,
    with the settings of that host (``DOCKER_HOST``: its own engine, and so on)."""

    hostname: str
    netns: str | None
    settings: Mapping[str, str]

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run in this host's namespaces (exec all the way: one process)."""
        enter = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        uts = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname]
        return [*enter, *uts, *args]

    def env(self, shared: Mapping[str, str]) -> dict[str, str]:
        """A child's environment: the shared settings, then this host's."""
        env = child_env({**shared, **self.settings})
        for name in NO_PROXY_ENV:
            env.pop(name, None)
        if "DOCKER_HOST" not in self.settings:
            env.pop("DOCKER_HOST", None)
        return env


def netns_inode(pid: int) -> str:
    """The network namespace of process ``pid`` (``net:[inode]``)."""
    return os.readlink(f"/proc/{pid}/ns/net")


def host_netns_inode(host: Host) -> str:
    """The network namespace ``host`` runs in."""
    if host.netns is None:
        return netns_inode(1)
    return f"net:[{os.stat(f'/run/netns/{host.netns}').st_ino}]"


def start_worker(
    supervisor: Supervisor,
    host: Host,
    *,
    shared: Mapping[str, str],
    name: str,
    queues: str,
    wait: bool = True,
) -> Service:
    """``shipway worker`` (one prefork child) consuming ``queues`` on ``host``."""
    node = f"{name}@{host.hostname}"
    args = [executable("shipway"), "worker", "--queues", queues, "--concurrency", "1"]
    worker = supervisor.spawn(name, host.command([*args, "--hostname", node]), env=host.env(shared))
    if wait:
        worker.wait_for_log(f"{node} ready.", timeout=60)
    return worker


def start_relay(
    supervisor: Supervisor, host: Host, *, shared: Mapping[str, str], wait: bool = True
) -> Service:
    """``shipway relay`` (dispatch, reaper, router watch, monitor) on ``host``."""
    relay = supervisor.spawn(
        "relay", host.command([executable("shipway"), "relay"]), env=host.env(shared)
    )
    if wait:
        relay.wait_for_log("relay started", timeout=60)
    return relay
