"""The managers of a swarm, with failover (``SHIPWAY_SWARM_MANAGERS``).

Every service operation of the Swarm runtime goes to one manager. When that manager does
not answer (its host is down: connection refused, reset or timed out) or answers that the
swarm has no leader (the managers are electing a new one after the leader was lost), the
operation is tried on the next manager, round after round with a short backoff, until one
succeeds or ``failover_seconds`` have passed; then it is a ``RuntimeFailure`` with reason
``swarm_unavailable`` and the error each manager gave (a job fails with that diagnosis).

An operation that may have been applied by a manager that died before it answered is
tried again elsewhere; the Swarm runtime makes its operations safe to repeat (a service is
created under a unique name and found again by it on a conflict; a scale re-reads the
service before it updates it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import docker
import docker.errors
import requests
import urllib3.exceptions

from shipway.runtime.base import RuntimeFailure

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a manager that cannot act for the swarm right now says (swarmkit's gRPC errors as
# the engine passes them on): another manager may answer, or this one a moment later.
NO_LEADER_MARKERS = (
    "does not have a leader",
    "too few managers",
    "context deadline exceeded",
    "not a swarm manager",
    "code = unavailable",
    "transport is closing",
    "connection refused",
    "lost leadership",
    "raft",
)
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0)


def transient(error: BaseException) -> bool:
    """Whether ``error`` means "this manager cannot answer now" (not "the request is wrong")."""
    if isinstance(error, docker.errors.APIError):
        text = str(error.explanation or error).lower()
        return error.status_code == 503 or any(marker in text for marker in NO_LEADER_MARKERS)
    if isinstance(error, docker.errors.DockerException):
        return "connection" in str(error).lower()  # the client could not reach the engine
    return isinstance(
        error,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | urllib3.exceptions.HTTPError
        | ConnectionError
        | TimeoutError
        | FileNotFoundError,
    )


class ManagerPool:
    """Docker endpoints of a swarm's managers; ``call`` runs an operation on one that answers.

    ``clients`` are ready clients (tests, or ``DOCKER_HOST`` when no list is configured);
    ``endpoints`` are connected lazily, so a manager that is down when the process starts
    only costs a failover.
    """

    def __init__(
        self,
        *,
        endpoints: Sequence[str] = (),
        clients: Sequence[docker.DockerClient] = (),
        failover_seconds: float = 60.0,
        timeout_seconds: float = 30.0,
    ) -> None:
        if not endpoints and not clients:
            raise ValueError("a swarm needs at least one manager endpoint")
        self.names = [str(c.api.base_url) for c in clients] + list(endpoints)
        self._clients: list[docker.DockerClient | None] = [*clients, *([None] * len(endpoints))]
        self._endpoints = [""] * len(clients) + list(endpoints)
        self.failover_seconds = failover_seconds
        self.timeout_seconds = timeout_seconds
        self.current = 0
        self.failovers = 0
        self._lock = threading.Lock()

    def _client(self, index: int) -> docker.DockerClient:
        client = self._clients[index]
        if client is None:
            client = docker.DockerClient(
                base_url=self._endpoints[index], timeout=int(self.timeout_seconds)
            )
            self._clients[index] = client
        return client

    def call(self, operation: Callable[[docker.APIClient], T], *, what: str) -> T:
        """``operation(api)`` on the current manager, failing over as the module says."""
        deadline = time.monotonic() + self.failover_seconds
        errors: list[str] = []
        failed_in_round = 0
        while True:
            index = self.current
            try:
                return operation(self._client(index).api)
            except Exception as error:
                if not transient(error):
                    raise
                errors.append(f"{self.names[index]}: {_describe(error)}")
            with self._lock:
                if self.current == index:  # another thread may have moved on already
                    self.current = (index + 1) % len(self.names)
                    self.failovers += 1
            log.warning(
                "swarm manager %s could not %s (%s); trying %s",
                self.names[index],
                what,
                errors[-1],
                self.names[self.current],
            )
            if time.monotonic() >= deadline:
                raise RuntimeFailure(
                    "swarm_unavailable",
                    f"no manager of the swarm could {what} within {self.failover_seconds:g}s "
                    f"(tried {', '.join(self.names)}); last: {errors[-1]}",
                    managers=list(self.names),
                    errors=errors[-2 * len(self.names) :],
                )
            failed_in_round += 1
            if failed_in_round >= len(self.names):  # every manager refused: an election?
                rounds = len(errors) // len(self.names)
                time.sleep(BACKOFF_SECONDS[min(rounds, len(BACKOFF_SECONDS)) - 1])
                failed_in_round = 0

    def close(self) -> None:
        for client in self._clients:
            if client is not None:
                client.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, docker.errors.APIError):
        return f"{error.status_code} {error.explanation or error}"
    return f"{type(error).__name__}: {error}"
