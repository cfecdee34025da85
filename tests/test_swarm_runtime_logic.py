"""The pure parts of the Swarm runtime: task → replica mapping and the task template.
(The runtime itself is tested on a real multi-node swarm in tests/cluster.)"""

from __future__ import annotations

import docker.errors
import pytest
import requests

from shipway.runtime.base import ReplicaSpec, RuntimeFailure
from shipway.runtime.swarm_managers import ManagerPool, transient
from shipway.runtime.swarm_runtime import (
    _current_task,
    _docker_status,
    _published_port,
    _pull_error,
    _task_template,
)


def task(state: str, desired: str = "running", port: int | None = None, at: str = "1") -> dict:
    status: dict = {"State": state}
    if port:
        status["PortStatus"] = {"Ports": [{"PublishedPort": port, "PublishMode": "host"}]}
    return {"Status": status, "DesiredState": desired, "CreatedAt": at, "NodeID": "n1"}


def test_the_current_task_is_the_newest_the_swarm_wants_running() -> None:
    old = task("failed", desired="shutdown", at="1")
    new = task("running", port=30001, at="2")
    assert _current_task([old, new]) is new
    assert _current_task([old]) is old
    assert _current_task([]) is None
    assert _published_port(new) == 30001 and _published_port(old) is None


def test_task_states_read_as_container_states() -> None:
    assert _docker_status("running") == "running"
    assert _docker_status("preparing") == _docker_status("pending") == "created"
    assert _docker_status("failed") == _docker_status("shutdown") == "exited"


def test_a_pull_failure_is_told_apart() -> None:
    assert _pull_error("No such image: reg:5000/app@sha256:ab")
    assert not _pull_error("no suitable node (insufficient resources on 3 nodes)")


def test_the_task_template_has_init_limits_labels_restart_policy_and_placement() -> None:
    spec = ReplicaSpec(
        image="10.0.0.254:5000/app@sha256:ab",
        name="sw-rel-0",
        labels={"shipway.release": "rel"},
        container_port=8080,
        command=["httpd", "-f"],
        env={"A": "1"},
        memory_mb=64,
        cpus=0.5,
        constraints=["node.labels.zone==a"],
    )
    template = _task_template(spec)
    container = template["ContainerSpec"]
    assert container["Init"] is True and container["Args"] == ["httpd", "-f"]
    assert container["Labels"] == {"shipway.release": "rel"} and container["Env"] == ["A=1"]
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20}
    assert template["RestartPolicy"]["Condition"] == "any"
    placement = template["Placement"]
    assert placement["Constraints"] == ["node.labels.zone==a"]
    assert placement["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.id"}}]


# --- manager failover (runtime/swarm_managers.py) ---------------------------------------


class _Api:
    """A manager's API whose calls give ``outcomes`` in turn (an exception is raised)."""

    def __init__(self, name: str, outcomes: list[object]) -> None:
        self.base_url, self.outcomes, self.calls = name, outcomes, 0

    def answer(self) -> object:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class _Client:
    def __init__(self, name: str, *outcomes: object) -> None:
        self.api = _Api(name, list(outcomes))


def _api_error(status: int, text: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(text, response=response, explanation=text)


NO_LEADER = "rpc error: code = Unknown desc = The swarm does not have a leader."


def _pool(*clients: _Client, seconds: float = 5.0) -> ManagerPool:
    return ManagerPool(clients=clients, failover_seconds=seconds)


def test_a_manager_that_does_not_answer_fails_over_to_the_next_and_stays_there() -> None:
    dead = _Client("unix:///n1", requests.exceptions.ConnectionError("refused"))
    alive = _Client("unix:///n2", "services")
    pool = _pool(dead, alive)
    assert pool.call(lambda api: api.answer(), what="list services") == "services"
    assert pool.call(lambda api: api.answer(), what="list services") == "services"
    assert (dead.api.calls, alive.api.calls, pool.current, pool.failovers) == (1, 2, 1, 1)


def test_an_election_is_waited_out_on_the_surviving_managers() -> None:
    first = _Client("m1", _api_error(500, NO_LEADER), _api_error(500, NO_LEADER), "ok")
    second = _Client("m2", _api_error(503, "no leader"))
    assert _pool(first, second).call(lambda api: api.answer(), what="scale") == "ok"
    assert first.api.calls == 3 and second.api.calls == 2


def test_a_refused_request_is_not_retried_elsewhere() -> None:
    first = _Client("m1", _api_error(400, "invalid mount config"))
    second = _Client("m2", "ok")
    with pytest.raises(docker.errors.APIError):
        _pool(first, second).call(lambda api: api.answer(), what="create")
    assert second.api.calls == 0


def test_no_manager_within_the_deadline_is_a_classified_failure() -> None:
    pool = _pool(
        _Client("m1", requests.exceptions.ConnectionError("refused")),
        _Client("m2", _api_error(500, NO_LEADER)),
        seconds=0.3,
    )
    with pytest.raises(RuntimeFailure) as failed:
        pool.call(lambda api: api.answer(), what="create sw-r-0")
    assert failed.value.reason == "swarm_unavailable"
    assert "create sw-r-0" in failed.value.message
    assert failed.value.evidence["managers"] == ["m1", "m2"]
    assert any("does not have a leader" in e for e in failed.value.evidence["errors"])
    assert transient(requests.exceptions.ReadTimeout()) and not transient(ValueError("bad"))
