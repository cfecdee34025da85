"""The HAProxy master-worker process: start, seamless reload, stop, liveness.

The master (``-W``) owns a CLI socket (``-S``) used for ``reload`` and
``show proc``; on reload it re-executes itself and hands the listening sockets
to the new worker, so no connection is refused and in-flight requests finish in
the old worker. In daemon mode (``-D``) HAProxy outlives the Python process;
otherwise it is a child that receives SIGTERM when its parent dies (Linux).
An ``external`` process belongs to someone else (``shipway router run``, maybe in
another container): it is never started or stopped here, and it is alive while its
master socket answers (its pid may be in another pid namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shipway.router.base import RouterError
from shipway.router.runtime_api import MasterCLI, ProcStatus, RuntimeAPI

_PR_SET_PDEATHSIG = 1
# sun_path holds 107 bytes; HAProxy binds "<path>.<pid>.tmp" first, then renames it.
MAX_SOCKET_PATH = 107 - len(".4194304.tmp")

# A reload takes 50-100 ms: asking the master socket every 10 ms (a cheap local query)
# notices it done about 20 ms sooner than every 50 ms; whoever changes routes waits on it.
RELOAD_POLL_SECONDS = 0.01


class HAProxyProcess:
    """One HAProxy master-worker process tree whose files live in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        binary: str,
        daemon: bool,
        timeout: float,
        api: RuntimeAPI,
        external: bool = False,
    ) -> None:
        self.directory, self.binary, self.daemon, self.timeout = directory, binary, daemon, timeout
        self.external = external
        self.config_path = directory / "haproxy.cfg"
        self.routes_path = directory / "conf.d"  # one file per route (config_files.py)
        self.pid_path = directory / "haproxy.pid"
        self.log_path = directory / "haproxy.log"
        self.master = MasterCLI(directory / "master.sock", timeout=timeout)
        self.api = api
        self._child: subprocess.Popen[bytes] | None = None
        self._master_pid: int | None = None  # last pid read; survives pid file rewrites

    def check(self, config_paths: list[Path]) -> None:
        """Validate config files (or folders) with ``haproxy -c``; RouterError with
        HAProxy's output."""
        try:
            done = subprocess.run(
                [self.binary, "-c", "-q", *_config_args(config_paths)],
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RouterError(f"cannot run {self.binary} -c: {exc}") from exc
        if done.returncode != 0:
            raise RouterError(
                f"HAProxy rejects {config_paths[0]}: {(done.stdout + done.stderr).strip()}"
            )

    def start(self) -> None:
        """Start master and worker from ``haproxy.cfg`` and wait until the worker answers
        (an external one: wait until it answers, RouterError after the timeout)."""
        if self.external:
            self._wait_external()
            return
        if self.is_running():
            return
        self.pid_path.unlink(missing_ok=True)
        self._master_pid = None
        args = [self.binary, "-W", "-S", f"{self.master.path},mode,600"]
        args += ["-p", str(self.pid_path), *_config_args([self.config_path, self.routes_path])]
        offset = self._log_size()
        with self.log_path.open("ab") as log:
            if self.daemon:
                self._start_daemon([*args, "-D"], log.fileno(), offset)
            else:
                self._start_attached(args, log.fileno())
        try:
            status = self._wait(lambda s: bool(s.workers), offset, "start")
            self._wait_worker(status.workers[0], offset)
        except RouterError:
            self.stop(timeout=2.0)  # leave nothing half-started behind
            raise

    def _wait_external(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                raise RouterError(
                    f"the external router (shipway router run) does not answer on "
                    f"{self.master.path} after {self.timeout}s"
                )
            time.sleep(0.1)

    def _start_attached(self, args: list[str], log: int) -> None:
        try:
            self._child = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            raise RouterError(f"cannot start {self.binary}: {exc}") from exc

    def _start_daemon(self, args: list[str], log: int, offset: int) -> None:
        try:
            code = subprocess.run(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=self.timeout
            ).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RouterError(f"cannot start {self.binary}: {exc}") from exc
        if code != 0:
            raise RouterError(f"HAProxy did not start (exit {code}): {self.log_since(offset)}")

    def reads_route_files(self) -> bool:
        """Whether the running master reads ``conf.d`` (a master started by a shipway from
        before per-route files reads ``haproxy.cfg`` alone: a reload would lose routes)."""
        pid = None if self.external else self.pid()
        if pid is None:
            return True
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return True
        return str(self.routes_path).encode() in cmdline

    def reload(self) -> None:
        """Reload the config seamlessly; RouterError if HAProxy kept the old config."""
        before = self.master.status()
        offset = self._log_size()
        self.master.reload()

        def done(status: ProcStatus) -> bool:
            if status.reloads <= before.reloads:
                return False
            if status.failed_reloads:
                reason = _alerts(self.log_since(offset)) or f"see {self.log_path}"
                raise RouterError(
                    "HAProxy could not load the new configuration and keeps serving the "
                    f"previous one: {reason}"
                )
            return any(pid not in before.workers for pid in status.workers)

        status = self._wait(done, offset, "reload")
        self._wait_worker(next(p for p in status.workers if p not in before.workers), offset)

    def _wait(self, ready: Callable[[ProcStatus], bool], offset: int, what: str) -> ProcStatus:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._exited():
                raise RouterError(f"HAProxy exited during {what}: {self.log_since(offset)}")
            try:
                status = self.master.status()
                if ready(status):
                    return status
            except RouterError as exc:
                if exc.command is None or time.monotonic() > deadline:  # not a socket hiccup
                    raise
            if time.monotonic() > deadline:
                raise RouterError(f"HAProxy {what} not done after {self.timeout}s")
            time.sleep(RELOAD_POLL_SECONDS)

    def _wait_worker(self, pid: int, offset: int) -> None:
        """Wait until the admin socket is served by worker ``pid`` (not an old worker)."""
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(RouterError):
                if f"\nPid: {pid}\n" in self.api.send("show info"):
                    return
            if time.monotonic() > deadline:
                raise RouterError(
                    f"HAProxy worker {pid} does not answer on {self.api.path}: "
                    f"{self.log_since(offset)}"
                )
            time.sleep(RELOAD_POLL_SECONDS)

    def pid(self) -> int | None:
        """Pid of the master process if it is running."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None
        pid = self._pid_file() or self._master_pid
        if pid is None or not _alive(pid, self.config_path):
            return None
        self._master_pid = pid
        return pid

    def _pid_file(self) -> int | None:
        """The pid in the pid file; None while it is missing or being written.

        The master rewrites its pid file on every reload (it is briefly missing or
        empty) but keeps its pid, so callers fall back to the last pid read.
        """
        try:
            return int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _exited(self) -> bool:
        """Whether the started master is gone (unknown while it has not written its pid)."""
        if self.external:
            return False  # its pid means nothing here: waits end at their deadline
        if self._child is not None:
            return self._child.poll() is not None
        pid = self._pid_file() or self._master_pid
        # Existence only: while the master re-executes itself on reload, its
        # /proc cmdline is briefly not the one _alive() looks for.
        return pid is not None and not pid_exists(pid)

    def is_running(self) -> bool:
        """Whether this directory's HAProxy master is alive."""
        if self.external:
            try:
                self.master.status()
            except RouterError:
                return False
            return True
        return self.pid() is not None

    def stop(self, *, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop HAProxy: SIGTERM (or SIGUSR1 to let requests finish), SIGKILL after timeout.
        An external HAProxy is left alone (its owner stops it)."""
        if self.external:
            return
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1 if graceful else signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(pid) == pid:  # master leads its own session: workers too
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                self._wait_exit(pid, timeout)
        self._child = None
        self._master_pid = None
        self.pid_path.unlink(missing_ok=True)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._child is not None and self._child.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child.wait(timeout=0.05)
            if not _alive(pid, self.config_path):
                return True
            time.sleep(0.05)
        return False

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int, limit: int = 2000) -> str:
        """What HAProxy logged after ``offset`` (its last ``limit`` characters)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace").strip()[-limit:]
        except FileNotFoundError:
            return ""


def _alerts(log: str) -> str:
    """Only HAProxy's ALERT lines of ``log`` (the reasons), or all of it if there are none."""
    alerts = [line for line in log.splitlines() if "[ALERT]" in line]
    return "\n".join(alerts) if alerts else log


def pid_exists(pid: int) -> bool:
    """Whether process ``pid`` exists (in this pid namespace) and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no procfs access: assume alive, as _alive does
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _config_args(paths: list[Path]) -> list[str]:
    return [arg for path in paths for arg in ("-f", str(path))]


def _alive(pid: int, config_path: Path) -> bool:
    """Whether ``pid`` runs (not a zombie) with our config (guards against pid reuse)."""
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        if Path("/proc/self").exists():
            return False
        try:  # no procfs: best effort
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X") and str(config_path).encode() in cmdline


def die_with_parent() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child when its parent dies.

    The signal follows the *thread* that started the child: start an attached
    HAProxy from a long-lived thread (or use daemon mode).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


def check_directory(directory: Path) -> None:
    """RouterError unless the folder can hold HAProxy's config and unix sockets."""
    text = str(directory)
    if any(c.isspace() or c in ",\"'#" for c in text):
        raise RouterError(f"router folder {text!r} must not contain spaces, commas, quotes or #")
    if len(str(directory / "master.sock")) > MAX_SOCKET_PATH:
        limit = MAX_SOCKET_PATH - len("/master.sock")
        raise RouterError(f"router folder {text!r} is too long for unix sockets (max {limit})")
