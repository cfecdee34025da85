"""Free space of the data directory, and storage exhaustion as a server condition.

A full disk (``ENOSPC``), a full quota (``EDQUOT``), SQLite's "database or disk is full"
and PostgreSQL's ``disk_full`` are the server's problem, never the client's: code that
writes turns them into :class:`~shipway.errors.StorageExhausted` with :func:`exhausted`
(one log line, one count), which the API answers with ``507 insufficient_storage`` and
``Retry-After``. Nothing is kept of what the request wrote; once space is freed the
same request succeeds. :func:`data_dir_space` tells, before that, when space runs low:
``/readyz``, ``GET /queue`` and ``/metrics`` show it (docs/storage.md).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipway.config import get_settings
from shipway.errors import StorageExhausted

log = logging.getLogger(__name__)

EXHAUSTION_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = 13
POSTGRES_DISK_FULL = "53100"
RETRY_AFTER_SECONDS = 30.0
OPERATIONS = ("source_upload", "database", "write", "dispatch")
"""Where exhaustion is counted: staging an upload, a database write, any other write a
request made, sending a job to the embedded (filesystem) queue after its commit (and, in
the processes that run them, ``job`` and ``periodic``)."""

_counts = dict.fromkeys(OPERATIONS, 0)
_counts_lock = threading.Lock()


@dataclass(frozen=True)
class DiskSpace:
    """Free and total bytes of the filesystem holding the data directory, and its limits."""

    free_bytes: int
    total_bytes: int
    min_free_bytes: int
    reserved_free_bytes: int

    @property
    def low(self) -> bool:
        """Below ``SHIPWAY_MIN_FREE_BYTES``: still working, time to free space."""
        return self.free_bytes < self.min_free_bytes

    @property
    def exhausted(self) -> bool:
        """At or below ``SHIPWAY_RESERVED_FREE_BYTES`` (or nothing at all left): publishes
        are refused before they write, ``/readyz`` answers 503."""
        return self.free_bytes <= self.reserved_free_bytes

    def check(self) -> str:
        """The ``/readyz`` check: ``ok``, ``low: …`` or ``exhausted: …``."""
        state = "exhausted" if self.exhausted else "low" if self.low else "ok"
        if state == "ok":
            return state
        limit, name = (
            (self.reserved_free_bytes, "SHIPWAY_RESERVED_FREE_BYTES")
            if self.exhausted
            else (self.min_free_bytes, "SHIPWAY_MIN_FREE_BYTES")
        )
        return (
            f"{state}: {_mib(self.free_bytes)} free of {_mib(self.total_bytes)} "
            f"({name} is {_mib(limit)})"
        )


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def free_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the filesystem of ``path`` (or of its nearest existing parent).

    Free is what an unprivileged process may still use (``f_bavail``).
    """
    target = path.resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    facts = os.statvfs(target)
    return facts.f_bavail * facts.f_frsize, facts.f_blocks * facts.f_frsize


def data_dir_space() -> DiskSpace:
    """Free space of ``SHIPWAY_DATA_DIR`` with the configured limits."""
    settings = get_settings()
    free, total = free_space(settings.data_dir)
    return DiskSpace(
        free_bytes=free,
        total_bytes=total,
        min_free_bytes=settings.min_free_bytes,
        reserved_free_bytes=settings.reserved_free_bytes,
    )


def is_exhaustion(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) says the disk or quota is full."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in EXHAUSTION_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and (
            getattr(current, "sqlite_errorcode", None) == SQLITE_FULL
            or "database or disk is full" in str(current)
        ):
            return True
        if getattr(current, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
        if isinstance(current, shutil.Error) and _copy_ran_out(current):
            return True
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
        pending += [orig if isinstance(orig, BaseException) else None]
        pending.append(current.__cause__)
        if not current.__suppress_context__:  # ``raise … from None`` hides it on purpose
            pending.append(current.__context__)
    return False


def _copy_ran_out(error: shutil.Error) -> bool:
    """``shutil.copytree`` gathers its failures as (source, target, message) strings."""
    marks = tuple(f"[Errno {number}]" for number in EXHAUSTION_ERRNOS)
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return any(isinstance(e, tuple) and any(m in str(e[-1]) for m in marks) for e in entries)


def exhausted(operation: str, error: BaseException | None = None) -> StorageExhausted:
    """Count and log one exhaustion (:func:`record`); the error to raise for it."""
    record(operation, error)
    return StorageExhausted(
        "the server is out of storage space; nothing was stored, retry once space is freed",
        retry_after=RETRY_AFTER_SECONDS,
        operation=operation,
    )


def record(operation: str, error: BaseException | None = None, *, during: str = "") -> None:
    """Count one exhaustion under ``operation``; log it on one line (no traceback), saying
    ``during`` what it happened (default: the operation)."""
    with _counts_lock:
        _counts[operation] = _counts.get(operation, 0) + 1
    space = data_dir_space()
    cause = getattr(error, "orig", None) or error  # the driver's error, without SQL and params
    first_line = str(cause).splitlines()[0] if str(cause) else ""
    reason = f"{type(cause).__name__}: {first_line}" if cause is not None else "below the reserve"
    log.warning(
        "storage exhausted during %s (%s); data dir %s free of %s",
        during or operation,
        reason,
        _mib(space.free_bytes),
        _mib(space.total_bytes),
    )


def storage_diagnostics(error: BaseException) -> dict[str, Any]:
    """The diagnosis of a job that found the disk full: the server's condition, not the
    input's (``failure_reason`` ``insufficient_storage``)."""
    space = data_dir_space()
    return {
        "title": "The server ran out of storage space",
        "description": "A write found the disk or quota full; nothing is wrong with what was "
        "asked. What the job wrote is kept only if it finished.",
        "action": "Free space in the server's data directory (docs/storage.md), then run it "
        "again (publish again, or repeat the promote).",
        "evidence": {
            "error": f"{type(error).__name__}: {error}"[:500],  # copytree lists every file
            "data_dir_free_bytes": space.free_bytes,
            "data_dir_total_bytes": space.total_bytes,
        },
    }


def ensure_room(operation: str) -> None:
    """Refuse (StorageExhausted) a write that would eat into the reserved free space."""
    if data_dir_space().exhausted:
        raise exhausted(operation)


def exhausted_counts() -> dict[str, int]:
    """Exhaustions counted by this process, by operation (for ``/metrics``)."""
    with _counts_lock:
        return dict(_counts)
