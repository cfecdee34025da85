"""A small real filesystem that can be filled: a tmpfs mount and a file that takes its space.

Mounting needs root (tests skip without it). The mount is always undone, even when the
test fails; a mount still busy (a process that outlived its test holds a file) is
detached lazily so the next test starts clean.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipway.storage import free_space

MiB = 1024 * 1024

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, *, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``40m``) at ``mount`` (created) for the block's duration."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


class Filler:
    """One file in ``folder`` that takes its filesystem's free space but ``leave`` bytes."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "filler"

    def fill(self, *, leave: int) -> None:
        """Grow the file until at most ``leave`` bytes are free (real blocks: fallocate)."""
        free, _total = free_space(self.path.parent)
        with open(self.path, "ab") as handle:
            if free > leave:
                os.posix_fallocate(handle.fileno(), handle.tell(), free - leave)
        assert free_space(self.path.parent)[0] <= leave

    def free(self) -> None:
        """Give all of its space back."""
        self.path.unlink(missing_ok=True)
