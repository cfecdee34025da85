"""A real multi-node Docker Swarm on this one machine, and a registry, for tests.

``Cluster`` builds N Docker engines (default 3), each in its own network, mount and UTS
namespace with its own dockerd/containerd, data root and ``/etc/docker``, joins them in a
swarm (node 1 is the manager; ``managers=3`` makes nodes 2 and 3 managers too) and starts
a Docker Distribution registry (Debian's ``docker-registry``) that every node can pull
from. It needs root. The machine's main Docker engine is only read from (``load_image``)
and the host's iptables are never touched.

Layout (``NET`` = 10.87.0)::

    root namespace: swyroot 10.87.0.254 (tests, HAProxy, shipway; the registry listens here)
        └─veth─┐  netns swyhub: bridge swybr0 (own iptables, so the host's FORWARD DROP
               │               policy and bridge-nf-call-iptables do not apply)
    netns swyn1: eth0 10.87.0.1 ─┤  dockerd + containerd of node 1, unix socket in the base
    netns swyn2: eth0 10.87.0.2 ─┤  ...
    netns swyn3: eth0 10.87.0.3 ─┘

Nodes have no default route: nothing they do leaves the machine, and a pull from anywhere
but the registry fails at once. Host-mode published ports of a node answer on
``node_address(i)`` from the root namespace; Swarm's routing mesh and VIPs do not work on
this kernel (no IPVS), so do not rely on them.

Everything carries the prefix ``swy`` (namespaces, links, cgroups) or lives under the base
folder (default ``/tmp/shipway-cluster``), and ``sweep()`` removes all of it by discovery:
``stop()`` is a sweep, and ``start()`` sweeps the leftovers of a run that crashed first.
One cluster runs per machine at a time (a lock in /run/lock; a second start waits).

Command line (as root)::

    python -m tests.support.cluster up [--nodes N] [--managers M]   # until Ctrl-C
    python -m tests.support.cluster down                            # sweep leftovers
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, TypeVar

import docker
import docker.errors

T = TypeVar("T")

PREFIX = "swy"
HUB = f"{PREFIX}hub"
BRIDGE = f"{PREFIX}br0"
ROOT_LINK = f"{PREFIX}root"
NET = "10.87.0"  # node i is NET.i, the root namespace's leg NET.254
HOST_ADDRESS = f"{NET}.254"
SWARM_ADDR_POOL = "10.98.0.0/16"  # overlay networks
DEFAULT_BASE = Path(os.environ.get("SHIPWAY_CLUSTER_DIR", "/tmp/shipway-cluster"))
LOCK_PATH = Path("/run/lock/shipway-cluster.lock")
REQUIRED_COMMANDS = ("ip", "nsenter", "unshare", "dockerd", "docker", "docker-registry")
# Processes the harness starts (directly, or dockerd does); a sweep kills only these
# names, and only when their command line names the base folder.
DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-registry")
NO_PROXY_ENV = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class ClusterError(RuntimeError):
    """The cluster could not do what was asked (the message says why, with log tails)."""


def _log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; ClusterError after ``timeout`` s.

    An exception from ``probe`` counts as "not yet" (the last one is in the message), except
    a ClusterError, which ends the wait at once (a daemon exited, say).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
        except ClusterError:
            raise
        except Exception as exc:  # not ready yet: daemons refuse connections while starting
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f" (last error: {last!r})" if last else ""
            more = f"\n{detail()}" if detail else ""
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{extra}{more}")
        time.sleep(interval)


def _run(*args: str, check: bool = True, input: bytes | None = None) -> str:
    proc = subprocess.run(args, input=input, capture_output=True, check=False)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"  ({path}: no log)"
    return "\n".join(f"  {path.name}: {line}" for line in text)


def _http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """One request straight to a lab address (never through a proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method, headers=headers or {})
    return opener.open(request, timeout=3)


def preflight() -> str | None:
    """Why this machine cannot run a cluster, or None when it can (checks are cheap)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts and dockerd)"
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        return f"missing {', '.join(missing)} (run `make provision`)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (dockerd's overlay2 storage)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    probe = subprocess.run(["unshare", "--net", "--mount", "--uts", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create namespaces: {probe.stderr.decode(errors='replace').strip()}"
    return None


# --- discovery and sweep ------------------------------------------------------


def _netns_names() -> list[str]:
    try:
        return sorted(p.name for p in Path("/run/netns").iterdir() if p.name.startswith(PREFIX))
    except OSError:
        return []


def _cgroup_dirs() -> list[Path]:
    return sorted(Path("/sys/fs/cgroup").glob(f"*/{PREFIX}n*")) + sorted(
        Path("/sys/fs/cgroup").glob(f"{PREFIX}n*")
    )


def _alive(pid: int) -> bool:
    """Running (a zombie, or a process gone, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _pids_in_netns(names: list[str]) -> set[int]:
    inodes = set()
    for name in names:
        with contextlib.suppress(OSError):
            inodes.add(f"net:[{os.stat(f'/run/netns/{name}').st_ino}]")
    found: set[int] = set()
    if not inodes:
        return found
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") in inodes:
                    found.add(int(entry.name))
    return found


def _pids_in_cgroups(dirs: list[Path]) -> set[int]:
    found: set[int] = set()
    for top in dirs:
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in procs.read_text().split())
    return found


def _daemon_pids(base: Path) -> set[int]:
    """dockerd, containerd, shims and the registry whose command line names ``base``."""
    needle = str(base).encode() + b"/"
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            comm = (entry / "comm").read_text().strip()
            if comm.startswith(DAEMONS) and needle in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
    return found


def _kill_all(find: Callable[[], set[int]], *, timeout: float = 20.0) -> int:
    """SIGKILL everything ``find`` returns until it returns nothing alive; how many."""
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for pid in find() if pid != me and _alive(pid)}
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise ClusterError(f"processes still alive after SIGKILL: {sorted(pids)}")
        for pid in pids - killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.05)


def _remove_cgroup(top: Path) -> None:
    for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == str(base) or target.startswith(prefix):
            mounts.append(target)
    return mounts


def _links() -> list[str]:
    """Names of the root namespace's network links."""
    return [
        line.split(":")[1].strip().split("@")[0]
        for line in _run("ip", "-o", "link", "show", check=False).splitlines()
        if len(line.split(":")) > 2
    ]


def sweep(base: Path = DEFAULT_BASE) -> list[str]:
    """Remove every trace of a cluster (this run's or a crashed one's); what it removed."""
    removed: list[str] = []
    names = _netns_names()
    cgroups = _cgroup_dirs()
    # Everything at once: node daemons, the containers (cgroups), anything in a node's
    # network namespace (docker-proxy), the registry. A killed dockerd cannot restart
    # its containerd, and the loop catches whatever appears in between.
    count = _kill_all(
        lambda: _pids_in_netns(names) | _pids_in_cgroups(cgroups) | _daemon_pids(base)
    )
    if count:
        removed.append(f"{count} process(es)")
    for target in sorted(_mounts_under(base), key=len, reverse=True):
        _run("umount", "-l", target, check=False)
        removed.append(f"mount {target}")
    for name in names:
        _run("ip", "netns", "delete", name, check=False)
        removed.append(f"netns {name}")
    for link in _links():
        if link.startswith(PREFIX):
            _run("ip", "link", "delete", link, check=False)
            removed.append(f"link {link}")
    for top in cgroups:
        _remove_cgroup(top)
    if cgroups:
        removed.append(f"{len(cgroups)} cgroup folder(s)")
    marker = base / "created-run-netns"
    netns_dir = Path("/run/netns")
    if marker.exists() and netns_dir.is_dir() and not any(netns_dir.iterdir()):
        # `ip netns add` made /run/netns (a bind mount of itself) for us: drop it
        _run("umount", str(netns_dir), check=False)
        with contextlib.suppress(OSError):
            netns_dir.rmdir()
    if base.exists():
        left = _mounts_under(base)
        if left:
            raise ClusterError(f"mounts still under {base}, not deleting it: {left}")
        shutil.rmtree(base, ignore_errors=True)
        removed.append(str(base))
    return removed


def leftovers(base: Path = DEFAULT_BASE) -> list[str]:
    """What of a cluster still exists (empty after a complete sweep)."""
    found = [f"netns {name}" for name in _netns_names()]
    found += [f"link {link}" for link in _links() if link.startswith(PREFIX)]
    found += [f"cgroup {top}" for top in _cgroup_dirs()]
    found += [f"mount {target}" for target in _mounts_under(base)]
    found += [f"process {pid}" for pid in sorted(_daemon_pids(base)) if _alive(pid)]
    if base.exists():
        found.append(str(base))
    return found


def _machine_lock(timeout: float) -> IO[str]:
    """Hold the one-cluster-per-machine lock (released when the handle is closed)."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK_PATH.open("a")
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise ClusterError(
                    f"another cluster holds {LOCK_PATH} for more than {timeout:g}s"
                ) from None
            if not told:
                _log(f"another cluster runs on this machine; waiting for {LOCK_PATH}")
                told = True
            time.sleep(0.5)


# --- the cluster --------------------------------------------------------------


class ClusterClient(docker.DockerClient):
    """A Docker SDK client that closes its connections at the end of a ``with`` block."""

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Node:
    index: int
    folder: Path
    manager: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{PREFIX}n{self.index}"

    @property
    def address(self) -> str:
        return f"{NET}.{self.index}"

    @property
    def socket(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def log(self) -> Path:
        return self.folder / "dockerd.log"


@dataclass
class Cluster:
    """N dockerd nodes in namespaces joined in a swarm, and a registry (see the module).

    ``with Cluster() as cluster:`` starts it and always removes it; or ``start()``/``stop()``.
    ``heartbeat`` (seconds) sets Swarm's dispatcher heartbeat period (default 5 s, a node is
    marked down after a few missed ones).
    """

    nodes: int = 3
    managers: int = 1
    base: Path = DEFAULT_BASE
    heartbeat: float | None = None
    start_timeout: float = 90.0
    lock_timeout: float = 900.0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 200:
            raise ValueError("nodes must be 1..200")
        if not 1 <= self.managers <= self.nodes:
            raise ValueError("managers must be 1..nodes")
        self.base = Path(self.base)
        self._nodes = [
            Node(i, self.base / f"n{i}", manager=i <= self.managers)
            for i in range(1, self.nodes + 1)
        ]
        self._registry: subprocess.Popen[bytes] | None = None
        self._registry_port = 0
        self._lock: IO[str] | None = None
        self._started = False
        self._old_handlers: dict[signal.Signals, Any] = {}

    # --- addresses -----------------------------------------------------------

    def node(self, i: int) -> Node:
        if not 1 <= i <= self.nodes:
            raise IndexError(f"node {i} (this cluster has nodes 1..{self.nodes})")
        return self._nodes[i - 1]

    def node_docker_host(self, i: int) -> str:
        """DOCKER_HOST of node ``i`` (1-based): a unix socket in the base folder."""
        return f"unix://{self.node(i).socket}"

    def node_address(self, i: int) -> str:
        """Node ``i``'s address; its host-mode published ports answer there."""
        return self.node(i).address

    @property
    def host_address(self) -> str:
        """The root namespace's address on the lab network (nodes reach it)."""
        return HOST_ADDRESS

    @property
    def registry_address(self) -> str:
        """``host:port`` of the registry, the same from the root namespace and the nodes."""
        return f"{HOST_ADDRESS}:{self._registry_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_address}"

    @property
    def registry_config(self) -> Path:
        """The registry's config file (``docker-registry garbage-collect`` takes it)."""
        return self.base / "registry" / "config.yml"

    def node_running(self, i: int) -> bool:
        process = self.node(i).process
        return process is not None and process.poll() is None

    def manager_docker_host(self) -> str:
        """DOCKER_HOST of a manager that answers and can act for the swarm (node 1 first)."""
        for node in self._nodes:
            if node.manager and self.node_running(node.index):
                with contextlib.suppress(Exception), self.client(node.index) as client:
                    if client.info()["Swarm"].get("ControlAvailable"):
                        return self.node_docker_host(node.index)
        raise ClusterError("no manager of the swarm answers")

    def client(self, i: int, timeout: int = 30) -> ClusterClient:
        """A Docker SDK client for node ``i`` (close it, or use it in a ``with``)."""
        return ClusterClient(base_url=self.node_docker_host(i), timeout=timeout)

    def manager_client(self) -> ClusterClient:
        """A Docker SDK client for a manager (see ``manager_docker_host``)."""
        return ClusterClient(base_url=self.manager_docker_host(), timeout=30)

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Cluster:
        """Build the namespaces, start the registry and the nodes, form the swarm."""
        if self._started:
            return self
        reason = preflight()
        if reason:
            raise ClusterError(f"this machine cannot run a cluster: {reason}")
        t_lock = time.monotonic()
        self._lock = _machine_lock(self.lock_timeout)
        self.timings["lock_wait"] = time.monotonic() - t_lock
        self._started = True
        atexit.register(self.stop)
        self._trap_signals()
        t0 = time.monotonic()
        try:
            leftovers = sweep(self.base)
            if leftovers:
                _log(f"removed leftovers of an earlier run: {', '.join(leftovers)}")
            self.base.mkdir(parents=True)
            self.base.chmod(0o755)
            self._network_up()
            self.timings["network"] = time.monotonic() - t0
            self._registry_start()
            for node in self._nodes:
                self._dockerd_start(node)
            for node in self._nodes:
                self._dockerd_wait(node)
            self.timings["engines"] = time.monotonic() - t0
            self._registry_wait()
            self._swarm_up()
            self.timings["swarm"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        _log(
            f"{self.nodes} nodes ({self.managers} manager(s)) Ready, registry at "
            f"{self.registry_address}, in {self.timings['swarm']:.1f}s"
        )
        return self

    def stop(self) -> None:
        """Remove everything this cluster made (idempotent; signals wait until done)."""
        if not self._started:
            return
        in_main = threading.current_thread() is threading.main_thread()
        held: dict[signal.Signals, Any] = {}
        if in_main:  # a second Ctrl-C must not leave the sweep half done
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                held[sig] = signal.signal(sig, signal.SIG_IGN)
        try:
            t0 = time.monotonic()
            sweep(self.base)
            for process in [n.process for n in self._nodes] + [self._registry]:
                if process is not None:
                    with contextlib.suppress(Exception):
                        process.wait(timeout=5)  # reap our own children
            self.timings["stop"] = time.monotonic() - t0
            left = leftovers(self.base)  # checked while this run still holds the lock
            if left:
                raise ClusterError(f"the sweep left {', '.join(left)}")
        finally:
            self._started = False
            for node in self._nodes:
                node.process = None
            self._registry = None
            atexit.unregister(self.stop)
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            if in_main:
                for signum, handler in {**held, **self._old_handlers}.items():
                    signal.signal(signum, handler)
                self._old_handlers = {}

    def _trap_signals(self) -> None:
        """SIGTERM/SIGHUP become KeyboardInterrupt, so finally-blocks and fixtures tear down."""
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                self._old_handlers[sig] = signal.signal(sig, interrupt)

    # --- network -----------------------------------------------------------------

    def _network_up(self) -> None:
        if not Path("/run/netns").exists():
            (self.base / "created-run-netns").touch()
        cmds = [
            f"netns add {HUB}",
            f"-n {HUB} link set lo up",
            f"-n {HUB} link add {BRIDGE} type bridge",
            f"-n {HUB} link set {BRIDGE} up",
            f"link add {ROOT_LINK} type veth peer name {ROOT_LINK}-p",
            f"link set {ROOT_LINK}-p netns {HUB}",
            f"-n {HUB} link set {ROOT_LINK}-p master {BRIDGE} up",
            f"addr add {HOST_ADDRESS}/24 dev {ROOT_LINK}",
            f"link set {ROOT_LINK} up",
        ]
        for node in self._nodes:
            ns = node.name
            cmds += [
                f"netns add {ns}",
                f"-n {ns} link set lo up",
                f"link add {ns}-e type veth peer name {ns}-p",
                f"link set {ns}-p netns {HUB}",
                f"-n {HUB} link set {ns}-p master {BRIDGE} up",
                f"link set {ns}-e netns {ns}",
                f"-n {ns} link set {ns}-e name eth0",
                f"-n {ns} addr add {node.address}/24 dev eth0",
                f"-n {ns} link set eth0 up",
            ]
        for cmd in cmds:
            _run("ip", *cmd.split())

    def set_node_link(self, i: int, up: bool) -> None:
        """Cut (or restore) node ``i``'s network link, like a pulled cable."""
        _run("ip", "-n", self.node(i).name, "link", "set", "eth0", "up" if up else "down")

    # --- registry ----------------------------------------------------------------

    def _registry_start(self) -> None:
        folder = self.base / "registry"
        (folder / "data").mkdir(parents=True)
        with socket.socket() as probe:  # a free port on the lab address
            probe.bind((HOST_ADDRESS, 0))
            self._registry_port = probe.getsockname()[1]
        config = {
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(folder / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.registry_address,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        self.registry_config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self._registry_spawn()

    def _registry_spawn(self) -> None:
        with (self.base / "registry" / "registry.log").open("ab") as log:
            self._registry = subprocess.Popen(
                ["docker-registry", "serve", str(self.registry_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_env(),
            )

    def _registry_wait(self) -> None:
        log = self.base / "registry" / "registry.log"

        def ready() -> bool:
            if self._registry is None or self._registry.poll() is not None:
                raise ClusterError(f"docker-registry exited:\n{_tail(log)}")
            with _http(f"{self.registry_url}/v2/") as response:
                return bool(response.status == 200)

        wait_for(ready, timeout=30, what="the registry", detail=lambda: _tail(log))

    def registry_restart(self) -> None:
        """Stop the registry (if running) and start it again on the same port and storage."""
        self.registry_stop()
        self._registry_spawn()
        self._registry_wait()

    def registry_stop(self) -> None:
        """Stop the registry (a test of "registry down"); ``registry_restart`` brings it back."""
        if self._registry is not None and self._registry.poll() is None:
            self._registry.terminate()
            try:
                self._registry.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._registry.kill()
                self._registry.wait()

    def registry_repositories(self) -> list[str]:
        with _http(f"{self.registry_url}/v2/_catalog?n=1000") as response:
            return list(json.load(response).get("repositories") or [])

    def registry_digest(self, repository: str, tag: str) -> str:
        """The manifest digest the registry serves for ``repository:tag``."""
        accept = ", ".join(
            [
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.index.v1+json",
            ]
        )
        url = f"{self.registry_url}/v2/{repository}/manifests/{tag}"
        with _http(url, method="HEAD", headers={"Accept": accept}) as response:
            return str(response.headers["Docker-Content-Digest"])

    def registry_garbage_collect(self) -> str:
        """Run the registry's garbage collection (``--delete-untagged``); its output."""
        return _run(
            "docker-registry", "garbage-collect", "--delete-untagged", str(self.registry_config)
        )

    # --- nodes -------------------------------------------------------------------

    def _dockerd_start(self, node: Node) -> None:
        d = node.folder
        etc = d / "etc-docker"
        for sub in ("data", "exec", "etc-docker"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        daemon_json = {"insecure-registries": [self.registry_address]}
        (etc / "daemon.json").write_text(json.dumps(daemon_json, indent=2) + "\n")
        with contextlib.suppress(FileNotFoundError):
            (d / "docker.pid").unlink()  # stale after a kill
        # nsenter --net, not `ip netns exec` (that remounts /sys and hides the cgroups:
        # "Devices cgroup isn't mounted"). unshare -m -u: the node's own hostname (its name
        # in the swarm), a private /etc/docker (its own engine key) and a private /run (the
        # shims' sockets in /run/containerd/s vanish with the node). All exec: the PID of
        # this process is dockerd's.
        script = (
            f"hostname {node.name} && mount --bind {etc} /etc/docker"
            f" && mount -t tmpfs -o mode=755 {PREFIX}run /run && exec dockerd"
            f" --config-file {etc}/daemon.json --data-root {d}/data --exec-root {d}/exec"
            f" --pidfile {d}/docker.pid -H unix://{node.socket}"
            f" --bip 10.88.{node.index}.1/24 --default-address-pool base=10.89.0.0/16,size=24"
            f" --cgroup-parent /{node.name} --storage-driver overlay2"
        )
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{node.name}",
                    "unshare",
                    "-m",
                    "-u",
                    "--propagation",
                    "slave",
                    "sh",
                    "-c",
                    script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_env(),
            )

    def _dockerd_wait(self, node: Node, timeout: float | None = None) -> None:
        def ready() -> bool:
            if node.process is None or node.process.poll() is not None:
                raise ClusterError(f"dockerd of {node.name} exited:\n{_tail(node.log)}")
            with self.client(node.index, timeout=5) as client:
                return bool(client.ping())

        wait_for(
            ready,
            timeout=timeout or self.start_timeout,
            what=f"dockerd of {node.name}",
            detail=lambda: _tail(node.log),
        )

    def _swarm_up(self) -> None:
        first = self._nodes[0]
        spec: dict[str, Any] = {}
        if self.heartbeat is not None:
            spec["dispatcher_heartbeat_period"] = int(self.heartbeat * 1e9)
        with self.client(1) as c1:
            c1.swarm.init(
                advertise_addr=first.address,
                listen_addr=f"{first.address}:2377",
                default_addr_pool=[SWARM_ADDR_POOL],
                subnet_size=24,
                **spec,
            )
            tokens = c1.swarm.attrs["JoinTokens"]
        for node in self._nodes[1:]:
            with self.client(node.index) as client:
                client.swarm.join(
                    remote_addrs=[f"{first.address}:2377"],
                    join_token=tokens["Manager" if node.manager else "Worker"],
                    advertise_addr=node.address,
                    listen_addr=f"{node.address}:2377",
                )
        self.wait_ready(timeout=self.start_timeout)
        with self.client(1) as c1:  # label each node with its name: spread/constraints use it
            for swarm_node in c1.nodes.list():
                hostname = swarm_node.attrs["Description"]["Hostname"]
                spec = swarm_node.attrs["Spec"]
                spec.setdefault("Labels", {})["shipway.node"] = hostname
                swarm_node.update(spec)

    def ready_nodes(self) -> list[str]:
        """Hostnames of the nodes the swarm's managers see as Ready."""
        with self.manager_client() as client:
            return sorted(
                n.attrs["Description"]["Hostname"]
                for n in client.nodes.list()
                if n.attrs["Status"]["State"] == "ready"
            )

    def wait_ready(self, timeout: float = 60.0, count: int | None = None) -> list[str]:
        """Wait until ``count`` (default: all) nodes are Ready; their names."""
        want = self.nodes if count is None else count

        def ready() -> list[str] | None:
            names = self.ready_nodes()
            return names if len(names) == want else None

        return wait_for(
            ready,
            timeout=timeout,
            what=f"{want} Ready node(s) in the swarm",
        )

    def kill_node(self, i: int, *, cut_link: bool = True) -> None:
        """Node ``i`` dies: SIGKILL its dockerd, containerd, shims and every container, and
        (``cut_link``) take its link down so its address stops answering, as a dead host's."""
        node = self.node(i)
        names = [node.name]
        cgroups = sorted(Path("/sys/fs/cgroup").glob(f"*/{node.name}"))
        _kill_all(lambda: _pids_in_netns(names) | _pids_in_cgroups(cgroups))
        if node.process is not None:
            node.process.wait(timeout=10)
        node.process = None
        if cut_link:
            self.set_node_link(i, up=False)

    def restart_node(self, i: int, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Start node ``i`` again (after ``kill_node``) with its data; wait until it is
        Ready in the swarm again (when a manager answers)."""
        node = self.node(i)
        if self.node_running(i):
            raise ClusterError(f"{node.name} is running")
        self.set_node_link(i, up=True)
        self._dockerd_start(node)
        self._dockerd_wait(node, timeout)
        if wait_ready:
            # Right after a kill the managers may still list the node as ready: wait for
            # the node's own engine to be back in the swarm too.
            def back() -> bool:
                with self.client(i, timeout=5) as client:
                    local = client.info()["Swarm"]["LocalNodeState"]
                return local == "active" and node.name in self.ready_nodes()

            wait_for(back, timeout=timeout, what=f"{node.name} Ready again")

    # --- images --------------------------------------------------------------------

    def load_image(self, tag: str, repository: str | None = None) -> str:
        """Put image ``tag`` of the main Docker engine into the registry; its reference by
        digest, ``registry/repository@sha256:...``, that every node can pull.

        The main engine is not told about this registry (that would mean changing its
        configuration), so the image goes ``docker save`` | node 1's ``docker load``, and node 1
        (whose daemon.json trusts the registry) tags and pushes it.
        """
        name, _, version = tag.rpartition(":")
        if not name or "/" in version:
            name, version = tag, "latest"
        target = f"{self.registry_address}/{repository or name}"
        save = subprocess.Popen(
            ["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert save.stdout is not None
        load = subprocess.run(
            ["docker", "-H", self.node_docker_host(1), "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            check=False,
        )
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
        if save.wait() != 0 or load.returncode != 0:
            raise ClusterError(
                f"docker save {tag} | load on node 1 failed: "
                f"{save_err.strip()} {load.stderr.decode(errors='replace').strip()}"
            )
        with self.client(1, timeout=120) as client:
            client.images.get(tag).tag(target, version)
            digest = None
            for line in client.images.push(target, tag=version, stream=True, decode=True):
                if "error" in line:
                    raise ClusterError(f"push of {target}:{version} failed: {line['error']}")
                digest = (line.get("aux") or {}).get("Digest") or digest
        if not digest:
            raise ClusterError(f"push of {target}:{version} reported no digest")
        return f"{target}@{digest}"


def _clean_env() -> dict[str, str]:
    """The environment for daemons: no proxy (lab addresses are local), no DOCKER_HOST."""
    env = {k: v for k, v in os.environ.items() if k not in NO_PROXY_ENV}
    env.pop("DOCKER_HOST", None)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--managers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.action == "down":
        with _machine_lock(60):
            removed = sweep(DEFAULT_BASE)
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    with Cluster(nodes=args.nodes, managers=args.managers) as cluster:
        for i in range(1, cluster.nodes + 1):
            print(f"node {i} {cluster.node_address(i)}: DOCKER_HOST={cluster.node_docker_host(i)}")
        print(f"registry: {cluster.registry_address}; Ctrl-C removes everything")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
