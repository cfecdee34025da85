"""``shipway worker --cpus LIST``: the worker and its pool children run on those CPUs only
(a real worker process on the test database and the filesystem broker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shipway.cli import app
from tests.support.processes import Supervisor, child_env, executable, proc_stats, wait_until
from workers.cpus import CpuListError, format_cpu_list, parse_cpu_list


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", {0}), ("1-3", {1, 2, 3}), ("0,2-3", {0, 2, 3}), (" 4, 1 ", {1, 4}), ("2-2", {2})],
)
def test_a_cpu_list_is_numbers_and_ranges(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "text", ["", "a", "1-", "-1", "1,,2", "3-1", "1.5", "0x1", "\u00b2", "0-99999999999", "8192"]
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(CpuListError):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("cpus", "text"), [({0}, "0"), ({0, 1, 2, 5}, "0-2,5"), ({3, 1}, "1,3"), (set(), "")]
)
def test_a_cpu_set_is_written_with_ranges(cpus: set[int], text: str) -> None:
    assert format_cpu_list(cpus) == text
    if cpus:
        assert parse_cpu_list(text) == cpus


def allowed_cpus(pid: int) -> str:
    """``Cpus_allowed_list`` of /proc/PID/status (as taskset -c writes it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_pinned_worker_and_its_pool_children_run_on_those_cpus_only(
    shipway_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    cpu = max(os.sched_getaffinity(0))  # one this test may use, whatever the machine
    supervisor = Supervisor(tmp_path / "logs")
    command = ["worker", "--concurrency", "2", "--queues", "rollouts", "--hostname", "pin@test"]
    env = child_env(shipway_env)
    if how == "option":
        command += ["--cpus", str(cpu)]
    else:
        env["SHIPWAY_WORKER_CPUS"] = str(cpu)
    try:
        worker = supervisor.spawn("pinned", [executable("shipway"), *command], env=env)
        worker.wait_for_log("pin@test ready.", timeout=60)

        def pool() -> list[int]:
            return [pid for pid, stat in proc_stats() if int(stat[1]) == worker.pid]

        wait_until(lambda: len(pool()) >= 2, timeout=30, message="the 2 pool children")
        assert allowed_cpus(worker.pid) == str(cpu)
        assert [allowed_cpus(child) for child in pool()] == [str(cpu)] * len(pool())
    finally:
        supervisor.stop_all()


@pytest.mark.parametrize(
    ("cpus", "says"),
    [("abc", "is not a CPU list"), ("4096", "is not available to this process")],
)
def test_a_bad_cpu_list_is_refused_before_the_worker_starts(cpus: str, says: str) -> None:
    mine = os.sched_getaffinity(0)

    result = CliRunner().invoke(app, ["worker", "--cpus", cpus])

    assert result.exit_code == 2
    assert "--cpus" in result.output and says in " ".join(result.output.split())
    assert os.sched_getaffinity(0) == mine  # nothing was changed
