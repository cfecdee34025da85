"""One ``shipway up`` per data directory, and what the one before it left behind.

``up.lock`` in the data directory is held (``flock``) while ``shipway up`` runs: a second
one on the same directory stops with a clear error instead of racing the first for the
SQLite database and the broker folder. ``up.json`` records the running instance's id and
its workers' Celery nodes. A new instance reads it first: worker processes the
previous instance left running (its pool children after a crash, a worker still in its
warm shutdown) are killed, and the jobs they held are taken back at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shipway.errors import ShipwayError

LOCK_FILE = "up.lock"
STATE_FILE = "up.json"


class AlreadyRunning(ShipwayError):
    """Another ``shipway up`` holds this data directory."""


@dataclass
class Instance:
    """This ``shipway up``: its id, lock, and its workers (written to ``up.json``)."""

    data_dir: Path
    id: str
    lock: IO[str]
    nodes: list[str] = field(default_factory=list)

    def record(self, *, nodes: list[str]) -> None:
        """Write this instance's id and workers' nodes to ``up.json`` (atomically)."""
        self.nodes = nodes
        body = {"instance": self.id, "pid": os.getpid(), "nodes": nodes}
        temporary = self.data_dir / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(body))
        os.replace(temporary, self.data_dir / STATE_FILE)

    def release(self) -> None:
        """Forget the workers (they are stopped) and unlock the data directory."""
        with contextlib.suppress(OSError):
            (self.data_dir / STATE_FILE).unlink()
        self.lock.close()


def acquire(data_dir: Path) -> tuple[Instance, dict[str, object]]:
    """Lock ``data_dir`` for this instance; returns it with the previous ``up.json`` ({} if none).

    Raises AlreadyRunning if another ``shipway up`` holds the lock."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the instance's life)
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        holder = _read_state(data_dir).get("pid", "?")
        raise AlreadyRunning(
            f"another `shipway up` (pid {holder}) is running on {data_dir}; stop it first "
            "or give this one its own SHIPWAY_DATA_DIR",
            code="already_running",
        ) from None
    return Instance(data_dir=data_dir, id=secrets.token_hex(4), lock=lock), _read_state(data_dir)


def kill_leftover_workers(previous: dict[str, object], *, timeout: float = 10.0) -> list[int]:
    """SIGKILL every worker process the previous instance left running (found by the
    ``SHIPWAY_UP_INSTANCE`` in their environment: worker, pool children); their pids."""
    instance = previous.get("instance")
    if not isinstance(instance, str) or not instance:
        return []
    marker = f"SHIPWAY_UP_INSTANCE={instance}".encode()
    killed = _processes_with(marker)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel tears them down: wait for it, with a deadline
    return killed


def _processes_with(marker: bytes) -> list[int]:
    """Live (not zombie) worker processes (``shipway.cli worker`` and its pool children, which
    share its command line) whose environment holds ``marker``. Not what they started:
    HAProxy, started by a worker in daemon mode, inherits the marker and must outlive them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        worker = b"shipway.cli" in command and b"worker" in command
        if worker and marker in environ and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _read_state(data_dir: Path) -> dict[str, object]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
