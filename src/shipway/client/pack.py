"""Pack a source folder as a gzipped tar for publish (``.git`` and ``.shipwayignore`` skipped)."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

IGNORE_FILE = ".shipwayignore"


@dataclass
class Packed:
    """The archive (a temporary file, rewound) and what went into it."""

    file: IO[bytes]
    files: int
    size: int
    sha256: str


def ignore_patterns(root: Path) -> list[str]:
    """Patterns of ``.shipwayignore``: one glob a line, ``#`` comments, ``dir/`` for folders."""
    path = root / IGNORE_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_ignored(relative: str, *, is_dir: bool, patterns: list[str]) -> bool:
    """Whether a path (``a/b/c``, relative to the root) matches a pattern.

    A pattern with a ``/`` inside matches the whole relative path (anchored at the
    root, a leading ``/`` allowed); one without matches any path component's name.
    A trailing ``/`` matches folders only.
    """
    name = relative.rsplit("/", 1)[-1]
    for raw in patterns:
        pattern = raw
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_folder(root: Path) -> Packed:
    """A tar.gz of ``root``'s contents (paths relative to it), in a spooled temp file."""
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    patterns = ignore_patterns(root)
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)  # noqa: SIM115
    count = 0
    # Same folder, same bytes (gzip header without a timestamp, no owner names): a retry
    # with the same Idempotency-Key then matches the first upload.
    with (
        gzip.GzipFile(fileobj=spool, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            rel_dir = here.relative_to(root).as_posix()
            prefix = "" if rel_dir == "." else f"{rel_dir}/"
            kept = []
            for name in sorted(dirs):
                rel = prefix + name
                if name == ".git" or is_ignored(rel, is_dir=True, patterns=patterns):
                    continue
                tar.add(here / name, arcname=rel, recursive=False, filter=_anonymous)
                if not (here / name).is_symlink():  # a link to a folder is kept as a link
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                rel = prefix + name
                skipped = name == ".git" or (not prefix and name == IGNORE_FILE)
                if skipped or is_ignored(rel, is_dir=False, patterns=patterns):
                    continue
                tar.add(here / name, arcname=rel, recursive=False, filter=_anonymous)
                count += 1
    size = spool.tell()
    spool.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: spool.read(1 << 20), b""):
        digest.update(chunk)
    spool.seek(0)
    return Packed(file=spool, files=count, size=size, sha256=digest.hexdigest())
