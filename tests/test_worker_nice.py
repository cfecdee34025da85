"""``shipway worker --nice N``: the worker and its pool children run N lower in CPU priority
(a real worker process on the test database and the filesystem broker)."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from shipway.cli import app
from tests.support.processes import Supervisor, child_env, executable, proc_stats, wait_until


def niceness(pid: int) -> int:
    """The nice value of ``pid``."""
    return next(int(fields[16]) for found, fields in proc_stats() if found == pid)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return [found for found, fields in proc_stats() if int(fields[1]) == pid]


def test_a_niced_worker_and_its_pool_children_run_at_lower_priority(
    shipway_env: dict[str, str], tmp_path: Path
) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    command = ["worker", "--nice", "7", "--concurrency", "2", "--queues", "rollouts"]
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        worker = supervisor.spawn(
            "nice",
            [executable("shipway"), *command, "--hostname", "nice@test"],
            env=child_env(shipway_env),
        )
        worker.wait_for_log("nice@test ready.", timeout=60)
        wait_until(
            lambda: len(children(worker.pid)) >= 2, timeout=30, message="the 2 pool children"
        )
        assert niceness(worker.pid) == mine + 7
        pool = children(worker.pid)
        assert [niceness(child) for child in pool] == [mine + 7] * len(pool)
    finally:
        supervisor.stop_all()


def test_a_niceness_out_of_range_is_refused_before_the_worker_starts() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)

    result = CliRunner().invoke(app, ["worker", "--nice", "20"])

    assert result.exit_code == 2
    assert "--nice" in result.output
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # nothing was lowered
