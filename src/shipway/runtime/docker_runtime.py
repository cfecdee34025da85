"""DockerRuntime: the Runtime protocol on the local Docker engine (DOCKER_HOST honoured)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions

from shipway.config import get_settings
from shipway.runtime.base import (
    BuildOutcome,
    ImageInfo,
    Replica,
    ReplicaSpec,
    RuntimeFailure,
    group_by_label,
)
from shipway.runtime.docker_inspect import replica_of, running_replica_of_listing
from shipway.runtime.docker_push import push_image
from shipway.runtime.hardening import docker_confinement

log = logging.getLogger(__name__)
STEP = re.compile(r"^Step \d+/\d+ : ")
RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})")
TAIL_LINES = 30
BUILD_CPU_SHARES = 256
"""CPU weight of a build's RUN steps (Docker's default is 1024): a build that burns CPU
leaves it to the replicas, the API and the rollouts first (issue 19: a rollback during
a build)."""


class _CancellableAPIClient(docker.APIClient):
    """An APIClient whose streaming response can be cut from another thread.

    Closing the socket under a streaming ``/build`` makes the engine cancel the
    build and (with ``forcerm``) remove its intermediate containers.
    """

    streaming: Any = None

    def _stream_helper(self, response: Any, decode: bool = False) -> Iterator[Any]:
        self.streaming = response
        return super()._stream_helper(response, decode)

    def cut(self) -> None:
        """Shut down the socket of the current streaming response, if any."""
        connection = getattr(getattr(self.streaming, "raw", None), "_connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class DockerRuntime:
    """Builds and inspects images with the Docker SDK."""

    endpoints_move = False  # a container keeps its port until shipway starts it again

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.client = client or docker.from_env()

    def _api(self) -> _CancellableAPIClient:
        params = docker.utils.kwargs_from_env()
        # The API version this engine speaks was negotiated when self.client was made;
        # "auto" would ask the engine again (a request, ~5 ms) for every build.
        return _CancellableAPIClient(version=self.client.api.api_version, **params)

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
        """Build ``context`` into ``tag``, streaming each log line to ``on_line``.

        The build is cut at the deadline, or as soon as ``should_stop()`` (polled
        every second) says so; its intermediate containers are removed.
        """
        api = self._api()
        started = time.monotonic()
        timed_out = threading.Event()
        done = threading.Event()

        stopped = threading.Event()

        def watchdog() -> None:
            deadline = started + timeout_seconds
            while not done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    timed_out.set()
                    api.cut()
                    return
                if should_stop():
                    stopped.set()
                    api.cut()
                    return

        threading.Thread(target=watchdog, name=f"build-deadline-{tag}", daemon=True).start()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        outcome = BuildOutcome(ok=False)
        try:
            for chunk in api.build(
                path=str(context),
                tag=tag,
                labels=labels,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                container_limits={"cpushares": BUILD_CPU_SHARES},
            ):
                self._consume(chunk, outcome, tail, on_line)
        except (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
            docker.errors.APIError,
            OSError,
        ) as error:
            if not (timed_out.is_set() or stopped.is_set()):
                outcome.error = outcome.error or f"{type(error).__name__}: {error}"
        finally:
            done.set()
            api.close()
        outcome.timed_out = timed_out.is_set()
        outcome.stopped = stopped.is_set()
        if not outcome.image_id or outcome.error or outcome.timed_out or stopped.is_set():
            self._remove_containers(outcome.build_containers)
        outcome.seconds = time.monotonic() - started
        outcome.log_tail = list(tail)
        outcome.ok = bool(outcome.image_id) and not (
            outcome.error or outcome.timed_out or outcome.stopped
        )
        return outcome

    @staticmethod
    def _consume(
        chunk: dict[str, Any],
        outcome: BuildOutcome,
        tail: deque[str],
        on_line: Callable[[str], None],
    ) -> None:
        if "stream" in chunk:
            for line in str(chunk["stream"]).splitlines():
                if not line.strip():
                    continue
                if STEP.match(line):
                    outcome.failing_step = line
                running = RUNNING_IN.match(line)
                if running:
                    outcome.build_containers.append(running.group(1))
                tail.append(line)
                on_line(line)
        if "error" in chunk:
            outcome.error = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
            tail.append(f"ERROR: {outcome.error}")
            on_line(f"ERROR: {outcome.error}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            outcome.image_id = str(aux["ID"])

    def _remove_containers(self, ids: list[str]) -> None:
        """Force-remove a cancelled build's intermediate containers (the engine may lag)."""
        for container_id in ids:
            try:
                self.client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as error:
                if "already in progress" not in str(error):
                    log.warning("could not remove build container %s: %s", container_id, error)

    def inspect_image(self, reference: str) -> ImageInfo | None:
        """Facts of an image, or None if missing."""
        try:
            attrs = self.client.api.inspect_image(reference)
        except docker.errors.ImageNotFound:
            return None
        config = attrs.get("Config") or {}
        return ImageInfo(
            id=attrs["Id"],
            tags=list(attrs.get("RepoTags") or []),
            size=int(attrs.get("Size") or 0),
            layers=list((attrs.get("RootFS") or {}).get("Layers") or []),
            env=list(config.get("Env") or []),
            exposed_ports=sorted((config.get("ExposedPorts") or {}).keys()),
            labels=dict(config.get("Labels") or {}),
            created=str(attrs.get("Created", "")),
        )

    def remove_image(self, reference: str) -> None:
        """Remove an image (and its tag) if present."""
        try:
            self.client.images.remove(reference, force=True, noprune=False)
        except docker.errors.ImageNotFound:
            return

    def push_image(self, reference: str, *, repository: str, tag: str) -> str:
        """Tag ``reference`` as ``repository:tag``, push it, return ``repository@digest``."""
        return push_image(self.client, reference, repository=repository, tag=tag)

    def run_replica(self, spec: ReplicaSpec) -> Replica:
        """Create and start a replica, reusing a running container of the same name.

        Create first, look second: a job's first attempt finds no container of that
        name, so it costs one create, one start and one inspect. The engine refuses a
        second container of one name (409), which is how an earlier attempt's
        container is found: reused while it runs, else replaced.
        """
        container_id = self._create(spec)
        if container_id is None:
            existing = self._by_name(spec.name)
            if existing is not None and existing.running:
                return existing
            if existing is not None:
                self.remove_replica(existing.id)
            container_id = self._create(spec)
            if container_id is None:
                raise RuntimeFailure(
                    "scheduling_failed", f"another container keeps the name {spec.name}"
                )
        try:
            self.client.api.start(container_id)
        except docker.errors.APIError as error:
            self.remove_replica(container_id)
            raise _scheduling_failure(spec, error) from None
        replica = self.inspect_replica(container_id)
        if replica is None:
            raise RuntimeFailure("scheduling_failed", f"{spec.name} vanished right after start")
        return replica

    def _create(self, spec: ReplicaSpec) -> str | None:
        """Create (not start) the container of ``spec``; None if its name is taken.

        The low-level call: ``containers.create`` inspects the new container once more,
        and ``containers.run`` would try to pull a missing image from a registry (its
        failure would look like a scheduling error).
        """
        api = self.client.api
        network = spec.network or get_settings().replica_network or None
        # On a replica network the router reaches the container itself: nothing published.
        bindings = {f"{spec.container_port}/tcp": (get_settings().replica_address, None)}
        host_config = api.create_host_config(
            port_bindings=None if network else bindings,
            restart_policy={"Name": "no"},
            # An init as PID 1 forwards SIGTERM: a server that installs no handler
            # (busybox httpd) stops at once instead of after the whole stop timeout.
            init=True,
            mem_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
            nano_cpus=int(spec.cpus * 1_000_000_000) if spec.cpus else None,
            pids_limit=spec.pids_limit,
            network_mode=network,
            **docker_confinement(spec.hardening),
        )
        networking = (
            api.create_networking_config({network: api.create_endpoint_config()})
            if network
            else None
        )
        try:
            created = api.create_container(
                image=spec.image,
                command=spec.command or None,
                name=spec.name,
                user=spec.hardening.user if spec.hardening and spec.hardening.user else None,
                labels=spec.labels,
                environment=spec.env,
                ports=[spec.container_port],
                host_config=host_config,
                networking_config=networking,
                detach=True,
            )
        except docker.errors.ImageNotFound as error:
            raise RuntimeFailure(
                "image_pull_failed", f"image {spec.image} is not on the engine", error=str(error)
            ) from None
        except docker.errors.APIError as error:
            if error.status_code == 409:
                return None
            raise _scheduling_failure(spec, error) from None
        return str(created["Id"])

    def _by_name(self, name: str) -> Replica | None:
        try:
            return self._replica(self.client.api.inspect_container(name))
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _replica(attrs: dict[str, Any]) -> Replica:
        return replica_of(attrs)

    def replicas(self, selector: dict[str, str]) -> list[Replica]:
        """Every container whose labels include ``selector``."""
        filters = {"label": [f"{key}={value}" for key, value in selector.items()]}
        found = []
        for summary in self.client.api.containers(all=True, filters=filters):
            replica = self.inspect_replica(summary["Id"])
            if replica is not None:
                found.append(replica)
        return found

    def replicas_by_label(self, key: str, values: Collection[str]) -> dict[str, list[Replica]]:
        """One listing of every container labelled ``key``; only those not running are
        inspected (for their exit code and error)."""
        wanted = set(values)
        found: list[Replica] = []
        for summary in self.client.api.containers(all=True, filters={"label": [key]}):
            if (summary.get("Labels") or {}).get(key) not in wanted:
                continue
            if summary.get("State") == "running":
                found.append(running_replica_of_listing(summary))
            elif (replica := self.inspect_replica(summary["Id"])) is not None:
                found.append(replica)
        return group_by_label(found, key, wanted)

    def inspect_replica(self, container_id: str) -> Replica | None:
        """One container, or None if it is gone."""
        try:
            return self._replica(self.client.api.inspect_container(container_id))
        except docker.errors.NotFound:
            return None

    def stopped_replicas(self, label: str) -> list[Replica]:
        """Every container carrying ``label`` that is not running (one filtered listing)."""
        filters = {"label": [label], "status": ["created", "exited"]}
        found = []
        for summary in self.client.api.containers(all=True, filters=filters):
            replica = self.inspect_replica(summary["Id"])
            if replica is not None and not replica.running:
                found.append(replica)
        return found

    def start_replica(self, container_id: str) -> Replica | None:
        """``docker start`` a stopped container; None if it is gone."""
        try:
            self.client.api.start(container_id)
        except docker.errors.NotFound:
            return None
        return self.inspect_replica(container_id)

    def logs(self, container_id: str, *, tail: int = 20) -> list[str]:
        """The last lines a container printed (stdout and stderr)."""
        try:
            raw = self.client.api.logs(container_id, tail=tail, stdout=True, stderr=True)
        except docker.errors.NotFound:
            return []
        return raw.decode("utf-8", "replace").splitlines()[-tail:]

    def stop_replica(self, container_id: str, *, timeout_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the timeout."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(container_id, timeout=max(0, int(timeout_seconds)))

    def remove_replica(self, container_id: str) -> None:
        """Force-remove a container; no error if gone."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:
            if "already in progress" not in str(error):
                raise


def _scheduling_failure(spec: ReplicaSpec, error: docker.errors.APIError) -> RuntimeFailure:
    return RuntimeFailure(
        "scheduling_failed",
        f"the engine could not create or start {spec.name}: {error.explanation or error}",
        error=str(error.explanation or error),
    )
