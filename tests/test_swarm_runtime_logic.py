"""The pure parts of the Swarm runtime: task → replica mapping and the task template.
(The runtime itself is tested on a real multi-node swarm in tests/cluster.)"""

from __future__ import annotations

from shipway.runtime.base import ReplicaSpec
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
