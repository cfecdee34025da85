"""HAProxy's runtime API (stats socket) and master CLI, one command per connection.

Both sockets answer a command and close once the client has shut down its
writing side; the master CLI waits forever otherwise.
"""

from __future__ import annotations

import csv
import io
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from shipway.router.base import RouterError

# Replies of successful change commands in HAProxy 2.6 (anything else is an error).
OK_ANSWERS = frozenset({"", "New server registered.", "Server deleted."})


class UnixLineClient:
    """Send one command to a unix socket and read the whole answer."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path, self.timeout = path, timeout

    def send(self, command: str, *, payload: str | None = None) -> str:
        """The raw answer to ``command`` (with a multi-line ``payload``, as ``set ssl cert``
        takes: ``<command> <<``, the lines, an empty line); RouterError if unreachable."""
        if "\n" in command or "\r" in command:
            raise RouterError("a runtime API command is one line", command=command)
        message = command.encode() + b"\n"
        if payload is not None:
            body = "\n".join(line for line in payload.splitlines() if line.strip())
            message = f"{command} <<\n{body}\n\n".encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout)
                conn.connect(str(self.path))
                conn.sendall(message)
                conn.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterError(
                f"HAProxy is not reachable on {self.path}: {exc}", command=command
            ) from exc
        return b"".join(chunks).decode(errors="replace")


class RuntimeAPI(UnixLineClient):
    """The worker's admin socket: server changes, stats, state."""

    def change(self, command: str) -> str:
        """Run a change command; RouterError with HAProxy's words unless it succeeded."""
        answer = self.send(command).strip()
        if answer not in OK_ANSWERS:
            raise RouterError(
                f"HAProxy refused {command!r}: {answer}", command=command, answer=answer
            )
        return answer

    def show(self, command: str, *, header: str) -> str:
        """Run a read command whose answer starts with ``header``; RouterError otherwise."""
        answer = self.send(command)
        if not answer.startswith(header):
            text = answer.strip()
            raise RouterError(f"HAProxy refused {command!r}: {text}", command=command, answer=text)
        return answer

    def backends(self) -> set[str]:
        """Names of every backend the running worker has."""
        answer = self.show("show backend", header="# name")
        return {line.strip() for line in answer.splitlines()[1:] if line.strip()}

    def server_state_rows(self, backend: str) -> list[dict[str, str]]:
        """``show servers state`` rows of ``backend``: its servers' addresses, weights and
        admin states. HAProxy finds the backend by name (``show stat`` walks every proxy:
        a thousand routes made it three times slower)."""
        answer = self.show(f"show servers state {backend}", header="1\n# be_id")
        lines = answer.splitlines()
        names = lines[1][2:].split()
        return [dict(zip(names, line.split(), strict=False)) for line in lines[2:] if line]

    def stat_rows(self, backend: str) -> list[dict[str, str]]:
        """``show stat`` CSV rows of the servers of ``backend`` (type 4 = servers)."""
        answer = self.show(f"show stat {backend} 4 -1", header="# pxname")
        return _stat_rows(answer, backend)


def _stat_rows(answer: str, backend: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(answer[2:]))
    return [row for row in reader if row.get("pxname") == backend]


@dataclass(frozen=True)
class ProcStatus:
    """What the master says of itself and its current worker(s)."""

    master_pid: int
    reloads: int
    failed_reloads: int  # since the last successful reload
    workers: list[int]
    old_workers: list[int] = field(default_factory=list)  # still finishing requests


_MASTER_LINE = re.compile(r"^(\d+)\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]")
_WORKER_LINE = re.compile(r"^(\d+)\s+worker\s+")


class MasterCLI(UnixLineClient):
    """The master process's CLI (``-S``): reload and process status."""

    def status(self) -> ProcStatus:
        """Parse ``show proc`` (only current workers, not old ones still finishing)."""
        answer = self.send("show proc")
        master = None
        workers: list[int] = []
        old_workers: list[int] = []
        section = ""
        for line in answer.splitlines():
            if line.startswith("#"):
                section = line
                continue
            if found := _MASTER_LINE.match(line):
                master = found
            elif section == "# workers" and (worker := _WORKER_LINE.match(line)):
                workers.append(int(worker.group(1)))
            elif section == "# old workers" and (worker := _WORKER_LINE.match(line)):
                old_workers.append(int(worker.group(1)))
        if master is None:
            raise RouterError(f"unexpected 'show proc' answer: {answer!r}", answer=answer)
        return ProcStatus(
            master_pid=int(master.group(1)),
            reloads=int(master.group(2)),
            failed_reloads=int(master.group(3)),
            workers=workers,
            old_workers=old_workers,
        )

    def worker_stat_rows(self, pid: int, backend: str) -> list[dict[str, str]]:
        """``show stat`` rows of ``backend`` in worker ``pid`` (an old one too); [] if none."""
        answer = self.send(f"@!{pid} show stat {backend} 4 -1")
        return _stat_rows(answer, backend) if answer.startswith("# pxname") else []

    def reload(self) -> None:
        """Ask the master to re-read the config; it closes the connection without answering."""
        self.send("reload")
