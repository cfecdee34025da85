"""Run shipway's real processes (workers, relay, API, ``shipway up``) for end-to-end tests.

Each process starts in its own session (process group) with its output in a log
file, so a test can kill a worker together with its prefork children, and the
fixture that started it can always stop everything it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def executable(name: str) -> str:
    """A console script of the running virtualenv (``shipway``, ``celery``), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


MAX_AUTO_SCALE = 4.0


def deadline_scale() -> float:
    """How much longer waits may take here: ``SHIPWAY_TEST_DEADLINE_SCALE`` if set, else the
    machine's load per CPU (1 on a quiet machine, at most 4). One factor for every wait in
    the suite, so a busy machine slows the tests down instead of failing them; a deadline
    that proves something (a job requeued *before* its lease) must leave room for it."""
    configured = os.environ.get("SHIPWAY_TEST_DEADLINE_SCALE")
    if configured:
        return max(1.0, float(configured))
    load_per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(MAX_AUTO_SCALE, max(1.0, load_per_cpu))


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds,
    stretched by ``deadline_scale()`` on a busy machine."""
    timeout *= deadline_scale()
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s: {text}")
        time.sleep(interval)


@dataclass
class Service:
    """One running process group (the process is its group leader) and its log file."""

    name: str
    args: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    gone: bool = False  # the whole group was killed and the leader reaped

    @property
    def pid(self) -> int:
        """Pid of the group leader (also the process group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the group leader still runs."""
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for failure messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, needle: str, *, timeout: float = 30.0) -> None:
        """Block until ``needle`` appears in the log; fail early if the process exits."""

        def seen() -> bool:
            if needle in self.log():
                return True
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before logging {needle!r}:\n"
                    f"{self.log_tail()}"
                )
            return False

        wait_until(
            seen,
            timeout=timeout,
            message=lambda: f"{self.name} did not log {needle!r}:\n{self.log_tail()}",
        )

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` belongs to this process group."""
        try:
            return os.getpgid(pid) == self.pid
        except ProcessLookupError:
            return False

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the whole group (no error if it is already gone)."""
        if self.gone:
            return  # never signal a group id that may since belong to someone else
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash: no shutdown code runs) and reap it."""
        self.signal_group(signal.SIGKILL)
        if not self.gone:
            self.process.wait(timeout=10)
            self.gone = True

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.alive() and grace > 0:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # Prefork children or a worker spawned by `shipway up` may outlive the leader.
        self.kill()


@dataclass
class Supervisor:
    """Starts processes in their own groups and stops every one of them at the end."""

    log_dir: Path
    services: list[Service] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> Service:
        """Start ``args`` in a new session with stdout and stderr in ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(args),
                env=dict(env),
                cwd=cwd or self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name=name, args=list(args), process=process, log_path=log_path)
        self.services.append(service)
        return service

    def owner_of(self, pid: int) -> Service:
        """The service whose process group contains ``pid`` (only ours may be killed)."""
        for service in self.services:
            if service.alive() and service.owns(pid):
                return service
        raise AssertionError(f"pid {pid} belongs to no process this test started")

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every process started here: SIGTERM them all, SIGKILL what outlives ``grace``."""
        for service in self.services:
            if service.alive():
                service.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for service in self.services:
            service.stop(grace=0)

    def logs(self) -> str:
        """Every service's log tail, for a failing test's report."""
        return "\n".join(f"----- {s.name} -----\n{s.log_tail()}" for s in self.services)


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The current environment without any SHIPWAY_* variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPWAY_")}
    # Test processes poll the API quickly with one token: no token rate limit unless asked.
    env.update(PYTHONUNBUFFERED="1", SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE="0")
    env.update(settings)
    return env


def proc_stat(pid: int) -> list[str]:
    """The /proc/PID/stat fields of ``pid`` after its command name (``[0]`` the state, ``[1]``
    the parent, ``[3]`` the session); OSError when the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Each process's pid and its ``proc_stat`` fields; a process gone while being read is
    skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), proc_stat(int(entry.name))
        except OSError:
            continue
