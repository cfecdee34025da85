"""Where sources and build logs live: a small protocol, a local-disk implementation."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from shipway.config import get_settings
from shipway.errors import PayloadTooLarge
from shipway.sources.archive import Limits, Unpacked, unpack
from shipway.storage import ensure_room, exhausted, is_exhaustion

CHUNK = 1 << 20


class Staged:
    """An upload received and unpacked into a staging folder, not yet owned by a version."""

    def __init__(self, folder: Path, sha256: str, size: int, unpacked: Unpacked) -> None:
        self.folder, self.sha256, self.size, self.unpacked = folder, sha256, size, unpacked

    @property
    def archive(self) -> Path:
        """The uploaded bytes."""
        return self.folder / "archive"

    @property
    def tree(self) -> Path:
        """The unpacked files."""
        return self.folder / "tree"


class SourceStore(Protocol):
    """Storage of sources and build logs (local disk today; S3-like stores later)."""

    def stage(self, stream: IO[bytes], *, max_bytes: int, limits: Limits) -> Staged:
        """Receive and unpack an upload into staging; removes it again on refusal."""
        ...

    def commit(self, staged: Staged, *, version_id: str) -> None:
        """Make staged files the source of ``version_id``."""
        ...

    def discard(self, version_id: str) -> None:
        """Remove everything stored for ``version_id``."""
        ...

    def tree(self, version_id: str) -> Path:
        """The unpacked source of a version."""
        ...

    def build_log(self, version_id: str) -> Path:
        """The build log file of a version."""
        ...


class LocalSourceStore:
    """Sources and logs under a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def stage(self, stream: IO[bytes], *, max_bytes: int, limits: Limits) -> Staged:
        """Copy the upload (hashing and counting it), then unpack it safely."""
        ensure_room("source_upload")
        folder = self.root / "staging" / secrets.token_hex(8)
        try:
            folder.mkdir(parents=True)
            digest, size = hashlib.sha256(), 0
            with open(folder / "archive", "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"source archive is larger than {max_bytes} bytes",
                            code="source_too_large",
                            limit_bytes=max_bytes,
                        )
                    digest.update(chunk)
                    out.write(chunk)
            unpacked = unpack(folder / "archive", folder / "tree", limits=limits)
        except BaseException as error:
            shutil.rmtree(folder, ignore_errors=True)
            if is_exhaustion(error):
                raise exhausted("source_upload", error) from None
            raise
        return Staged(folder, digest.hexdigest(), size, unpacked)

    def commit(self, staged: Staged, *, version_id: str) -> None:
        """Move a staged upload to the version's folder."""
        target = self.root / "sources" / version_id
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.folder, target)
        staged.folder = target

    def discard(self, version_id: str) -> None:
        """Remove a version's source and log."""
        shutil.rmtree(self.root / "sources" / version_id, ignore_errors=True)
        self.build_log(version_id).unlink(missing_ok=True)

    def drop_staged(self, staged: Staged) -> None:
        """Remove a staged upload unless it was committed to a version."""
        if staged.folder.parent == self.root / "staging":
            shutil.rmtree(staged.folder, ignore_errors=True)

    def tree(self, version_id: str) -> Path:
        """The unpacked source of a version."""
        return self.root / "sources" / version_id / "tree"

    def build_log(self, version_id: str) -> Path:
        """The build log file of a version."""
        return self.root / "logs" / f"{version_id}.build.log"

    @contextmanager
    def log_writer(self, version_id: str, *, truncate: bool) -> Iterator[IO[str]]:
        """Append (or start anew) a version's build log, line-buffered for followers."""
        path = self.build_log(version_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate:
            # A new file (made before the old one goes, so its inode differs) rather than a
            # truncated one: a follower notices the restart and reads the new log from 0.
            fresh = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
            fresh.touch()
            os.replace(fresh, path)
        with open(path, "a", buffering=1, encoding="utf-8") as handle:
            yield handle


def source_store() -> LocalSourceStore:
    """The configured store."""
    return LocalSourceStore(get_settings().data_dir)


def upload_limits() -> Limits:
    """Archive limits from settings."""
    settings = get_settings()
    return Limits(
        max_unpacked_bytes=settings.max_unpacked_bytes, max_files=settings.max_source_files
    )
