"""Replicas as Docker Swarm services: one service of one task per replica, on any node.

Why a service per replica: the Runtime protocol is replica-shaped (run, stop, start,
remove one replica by name), and shipway keeps its own rollout and traffic control, so
Swarm's update and rollback machinery is never used. Swarm places each task (spread
over the nodes: the scheduler prefers the node with the fewest tasks), restarts it
under its restart policy, and reschedules it when its node is lost.

Ports are published in host mode with no fixed published port: the node that runs the
task picks a free port, reported in the task's port status. The replica's endpoint is
that node's address and port, so neither the routing mesh nor VIPs (which need IPVS)
are used. Images are built on the engine of ``DOCKER_HOST``: by default a manager, which
then also takes the service operations; with ``managers`` (``SHIPWAY_SWARM_MANAGERS``)
``DOCKER_HOST`` is only the builder's own engine (any node, or none of the swarm) and the
service operations go to those managers, failing over between them
(runtime/swarm_managers.py). On more than one node images must come from a registry
every node can pull from.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from shipway.runtime.base import (
    BuildOutcome,
    ImageInfo,
    Replica,
    ReplicaSpec,
    RuntimeFailure,
    group_by_label,
)
from shipway.runtime.docker_runtime import DockerRuntime
from shipway.runtime.hardening import swarm_confinement
from shipway.runtime.swarm_managers import ManagerPool

SCHEDULE_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 10
# Task states (swarmkit) a replica passes through before it runs, and those it ends in.
PENDING_STATES = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready")
ENDED_STATES = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")
PULL_ERRORS = ("No such image", "pull access denied", "manifest unknown", "not found")


class SwarmRuntime:
    """Runs replicas on a Docker Swarm through its managers' API.

    ``client`` is the engine builds run on (default ``DOCKER_HOST``); ``managers`` are the
    Docker endpoints of the swarm's managers (default: that same engine, which must then
    be a manager). ``failover_seconds`` bounds how long one operation looks for a manager
    that answers (see runtime/swarm_managers.py).
    """

    endpoints_move = True  # a task of a lost node is rescheduled elsewhere, on a new port

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        managers: Sequence[str] = (),
        failover_seconds: float = 60.0,
    ) -> None:
        self.client = client or docker.from_env()
        self.images = DockerRuntime(self.client)  # builds run on this engine
        self.managers = (
            ManagerPool(endpoints=managers, failover_seconds=failover_seconds)
            if managers
            else ManagerPool(clients=[self.client], failover_seconds=failover_seconds)
        )
        self._node_addresses: dict[str, str] = {}

    def _call(self, operation: Callable[[docker.APIClient], Any], what: str) -> Any:
        return self.managers.call(operation, what=what)

    # ------------------------------------------------------------------ images

    def build_image(
        self,
        *,
        context: Path,
        tag: str,
        labels: dict[str, str],
        timeout_seconds: float,
        on_line: Callable[[str], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> BuildOutcome:
        """Build on the manager's engine (see the module docstring about registries)."""
        return self.images.build_image(
            context=context,
            tag=tag,
            labels=labels,
            timeout_seconds=timeout_seconds,
            on_line=on_line,
            should_stop=should_stop,
        )

    def inspect_image(self, reference: str) -> ImageInfo | None:
        """Facts of an image on the manager's engine, or None."""
        return self.images.inspect_image(reference)

    def remove_image(self, reference: str) -> None:
        """Remove an image from the manager's engine if present."""
        self.images.remove_image(reference)

    def push_image(self, reference: str, *, repository: str, tag: str) -> str:
        """Push from the manager's engine (which must trust the registry)."""
        return self.images.push_image(reference, repository=repository, tag=tag)

    # ---------------------------------------------------------------- replicas

    def run_replica(self, spec: ReplicaSpec) -> Replica:
        """Create the replica's service (or reuse a running one of that name) and wait
        until its task runs; RuntimeFailure if it cannot be scheduled or pulled."""
        existing = self._service(spec.name)
        if existing is not None:
            replica = self._replica(existing)
            if replica.running:
                return replica
            self.remove_replica(existing["ID"])
        try:
            created = self._call(lambda api: _create(api, spec), f"create {spec.name}")
        except docker.errors.APIError as error:
            again = self._service(spec.name) if error.status_code == 409 else None
            if again is None:
                raise RuntimeFailure(
                    "scheduling_failed",
                    f"the swarm refused the service {spec.name}: {error.explanation or error}",
                    error=str(error.explanation or error),
                ) from None
            # A manager created it and died before it answered: the retry found it by name.
            created = again
        return self._await_running(str(created["ID"]), spec)

    def replicas(self, selector: dict[str, str]) -> list[Replica]:
        """Every replica service whose labels include ``selector``."""
        filters = {"label": [f"{key}={value}" for key, value in selector.items()]}
        services = self._call(lambda api: api.services(filters=filters), "list services")
        return [self._replica(s) for s in services]

    def replicas_by_label(self, key: str, values: Collection[str]) -> dict[str, list[Replica]]:
        """One listing of the services labelled ``key``; the tasks of those asked for."""
        services = self._call(lambda api: api.services(filters={"label": [key]}), "list services")
        wanted = set(values)
        asked = [s for s in services if (s["Spec"].get("Labels") or {}).get(key) in wanted]
        return group_by_label([self._replica(s) for s in asked], key, wanted)

    def inspect_replica(self, container_id: str) -> Replica | None:
        """One replica (by service id), or None if it is gone."""
        service = self._service(container_id)
        return self._replica(service) if service is not None else None

    def stopped_replicas(self, label: str) -> list[Replica]:
        """Every replica service carrying ``label`` whose task does not run."""
        filters = {"label": [label]}
        services = self._call(lambda api: api.services(filters=filters), "list services")
        return [r for r in (self._replica(s) for s in services) if not r.running]

    def start_replica(self, container_id: str) -> Replica | None:
        """Run a stopped replica again (a new task; its node and port may change)."""
        if not self._scale(container_id, replicas=1, force=True):
            return None
        deadline = time.monotonic() + SCHEDULE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            replica = self.inspect_replica(container_id)
            if replica is None or replica.running:
                return replica
            time.sleep(POLL_SECONDS)
        return self.inspect_replica(container_id)

    def logs(self, container_id: str, *, tail: int = 20) -> list[str]:
        """The last lines the replica's tasks printed."""
        try:
            raw = self._call(
                lambda api: api.service_logs(
                    container_id, stdout=True, stderr=True, tail=tail, follow=False
                ),
                f"read the logs of {container_id}",
            )
        except (docker.errors.APIError, RuntimeFailure):
            return []
        text = b"".join(raw).decode("utf-8", "replace") if raw else ""
        return text.splitlines()[-tail:]

    def stop_replica(self, container_id: str, *, timeout_seconds: float) -> None:
        """Scale the replica's service to 0 (its task gets SIGTERM, then SIGKILL after
        the stop grace period) and wait until no task of it runs."""
        if not self._scale(container_id, replicas=0):
            return
        deadline = time.monotonic() + timeout_seconds + 10
        while time.monotonic() < deadline and self._running_tasks(container_id):
            time.sleep(POLL_SECONDS)

    def remove_replica(self, container_id: str) -> None:
        """Remove the replica's service (its task stops); no error if it is gone."""
        with contextlib.suppress(docker.errors.NotFound):
            self._call(lambda api: api.remove_service(container_id), f"remove {container_id}")

    # --------------------------------------------------------------- internals

    def _service(self, name_or_id: str) -> dict[str, Any] | None:
        try:
            found = self._call(lambda api: api.inspect_service(name_or_id), f"read {name_or_id}")
        except docker.errors.NotFound:
            return None
        return dict(found)

    def _scale(self, service_id: str, *, replicas: int, force: bool = False) -> bool:
        """Set the service's task count (``force``: a new task even at the same count);
        False if the service is gone. Read and update happen in one try on one manager,
        so a retry after a failover updates the service's current version."""

        def scale(api: docker.APIClient) -> bool:
            try:
                service = api.inspect_service(service_id)
            except docker.errors.NotFound:
                return False
            spec = service["Spec"]
            task = spec["TaskTemplate"]
            if force:
                task["ForceUpdate"] = int(task.get("ForceUpdate", 0)) + 1
            api.update_service(
                service["ID"],
                version=service["Version"]["Index"],
                task_template=task,
                name=spec["Name"],
                labels=spec.get("Labels"),
                mode=ServiceMode("replicated", replicas=replicas),
                endpoint_spec=spec.get("EndpointSpec"),
            )
            return True

        return bool(self._call(scale, f"scale {service_id} to {replicas}"))

    def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        filters = {"service": service_id}
        tasks = self._call(lambda api: api.tasks(filters=filters), f"list tasks of {service_id}")
        return sorted(tasks, key=lambda t: str(t.get("CreatedAt", "")))

    def _running_tasks(self, service_id: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self._tasks(service_id)
            if (t.get("Status") or {}).get("State") in ("running", *PENDING_STATES)
        ]

    def _await_running(self, service_id: str, spec: ReplicaSpec) -> Replica:
        deadline = time.monotonic() + SCHEDULE_TIMEOUT_SECONDS
        while True:
            service = self._service(service_id)
            if service is None:
                raise RuntimeFailure("scheduling_failed", f"{spec.name} vanished right after start")
            tasks = self._tasks(service_id)
            latest = tasks[-1] if tasks else None
            status = (latest or {}).get("Status") or {}
            if status.get("State") == "running" and _published_port(latest) is not None:
                return self._replica(service, tasks)
            if status.get("State") in ("failed", "rejected"):
                error = str(status.get("Err") or status.get("Message") or "")
                reason = "image_pull_failed" if _pull_error(error) else "scheduling_failed"
                self.remove_replica(service_id)
                raise RuntimeFailure(
                    reason,
                    f"the swarm could not start {spec.name}: {error}",
                    error=error,
                    image=spec.image,
                )
            if time.monotonic() >= deadline:
                self.remove_replica(service_id)
                raise RuntimeFailure(
                    "scheduling_failed",
                    f"no node ran {spec.name} within {SCHEDULE_TIMEOUT_SECONDS:.0f}s "
                    f"(task {status.get('State', 'missing')}: {status.get('Err', '')})",
                    task_state=status.get("State"),
                )
            time.sleep(POLL_SECONDS)

    def _replica(
        self, service: dict[str, Any], tasks: list[dict[str, Any]] | None = None
    ) -> Replica:
        spec = service.get("Spec") or {}
        tasks = self._tasks(service["ID"]) if tasks is None else tasks
        wanted = int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1))
        current = _current_task(tasks) if wanted else None
        status = (current or {}).get("Status") or {}
        container = status.get("ContainerStatus") or {}
        state = str(status.get("State") or ("exited" if not wanted else "created"))
        port = _published_port(current) if state == "running" else None
        return Replica(
            id=str(service["ID"]),
            name=str(spec.get("Name", "")),
            labels=dict(spec.get("Labels") or {}),
            status=_docker_status(state),
            exit_code=container.get("ExitCode") if state in ENDED_STATES else None,
            restart_count=max(0, len(tasks) - 1),
            host_port=port,
            address=self._node_address(str(current["NodeID"])) if port and current else None,
            error=str(status.get("Err") or ""),
        )

    def _node_address(self, node_id: str) -> str | None:
        if node_id not in self._node_addresses:
            try:
                node = self._call(lambda api: api.inspect_node(node_id), f"read node {node_id}")
            except docker.errors.NotFound:
                return None
            self._node_addresses[node_id] = str((node.get("Status") or {}).get("Addr", ""))
        return self._node_addresses[node_id] or None


def _create(api: docker.APIClient, spec: ReplicaSpec) -> dict[str, Any]:
    """Create the replica's service: one task, its port published in host mode with no
    fixed published port (the node that runs the task picks one)."""
    return dict(
        api.create_service(
            _task_template(spec),
            name=spec.name,
            labels=spec.labels,
            mode=ServiceMode("replicated", replicas=1),
            endpoint_spec=EndpointSpec(
                ports=[
                    {"Protocol": "tcp", "TargetPort": spec.container_port, "PublishMode": "host"}
                ]
            ),
        )
    )


def _task_template(spec: ReplicaSpec) -> TaskTemplate:
    container = ContainerSpec(
        image=spec.image,
        args=spec.command or None,
        env=spec.env,
        labels=spec.labels,
        init=True,  # PID 1 forwards SIGTERM (a bare httpd would wait out the grace period)
        stop_grace_period=STOP_GRACE_SECONDS * 1_000_000_000,
        **swarm_confinement(spec.hardening),
    )
    resources = Resources(
        cpu_limit=int(spec.cpus * 1_000_000_000) if spec.cpus else None,
        mem_limit=spec.memory_mb * 1024 * 1024 if spec.memory_mb else None,
    )
    if spec.pids_limit:  # TaskTemplate.Resources.Limits.Pids (API 1.41); the SDK has no field
        resources.setdefault("Limits", {})["Pids"] = spec.pids_limit
    return TaskTemplate(
        container_spec=container,
        resources=resources,
        restart_policy=RestartPolicy(condition="any", delay=1_000_000_000, max_attempts=0),
        placement=Placement(
            constraints=list(spec.constraints), preferences=[("spread", "node.id")]
        ),
        networks=[spec.network] if spec.network else None,
    )


def _current_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task the replica is now: the newest one the swarm wants running, else the newest."""
    wanted = [t for t in tasks if t.get("DesiredState") == "running"]
    chosen = wanted or tasks
    return chosen[-1] if chosen else None


def _published_port(task: dict[str, Any] | None) -> int | None:
    ports = (((task or {}).get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    for port in ports:
        if port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


def _docker_status(task_state: str) -> str:
    """A task state in the words of a container's status (what the features read)."""
    if task_state == "running":
        return "running"
    if task_state in PENDING_STATES:
        return "created"
    if task_state in ("starting",):
        return "restarting"
    return "exited"


def _pull_error(error: str) -> bool:
    return any(marker in error for marker in PULL_ERRORS)
