"""Safe unpacking of uploaded source archives (tar, tar.gz, zip).

Every entry is checked before a byte is written: no absolute paths, no ``..``,
no links leaving the root, no devices or FIFOs, and limits on file count and
unpacked size that are enforced on the bytes actually written (so a lying
header or a decompression bomb stops at the limit, not after it).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shipway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from shipway.storage import is_exhaustion

CHUNK = 1 << 16
MAX_LINK_TARGET = 4096


@dataclass(frozen=True)
class Limits:
    """Bounds on what an archive may unpack to."""

    max_unpacked_bytes: int
    max_files: int


@dataclass
class SourceFile:
    """One regular file of an unpacked source."""

    path: str
    size: int
    sha256: str


@dataclass
class Unpacked:
    """What an archive unpacked to."""

    format: str
    files: list[SourceFile] = field(default_factory=list)
    symlinks: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Sum of the regular files' sizes."""
        return sum(f.size for f in self.files)

    def has(self, path: str) -> bool:
        """Whether a regular file exists at ``path`` (relative, posix)."""
        return any(f.path == path for f in self.files)

    def manifest(self) -> dict[str, Any]:
        """A JSON-able listing: files with size and sha256."""
        return {
            "format": self.format,
            "file_count": len(self.files),
            "total_bytes": self.total_bytes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


def rejected(message: str, **evidence: Any) -> InvalidInput:
    """A source_invalid error with the offending facts."""
    return InvalidInput(message, code="source_invalid", **evidence)


def detect_format(head: bytes) -> str:
    """``tar.gz``, ``zip`` or ``tar`` from the first bytes; UnsupportedMediaType otherwise."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise UnsupportedMediaType(
        "unsupported archive format: send a tar, tar.gz or zip file",
        code="unsupported_archive",
        supported=["tar", "tar.gz", "zip"],
    )


def safe_relative(name: str) -> str:
    """Normalise an entry name to a relative posix path inside the root, or refuse it."""
    if "\x00" in name:
        raise rejected("archive entry name contains a NUL byte", entry=name[:200])
    clean = name.replace("\\", "/")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    # A drive ("C:", "C:x") is judged on the normalised name, so "./C:/x" is one too.
    drive = bool(parts) and len(parts[0]) > 1 and parts[0][1] == ":" and parts[0][0].isalpha()
    if clean.startswith("/") or drive:
        raise rejected(f"archive entry has an absolute path: {name[:200]}", entry=name[:200])
    if any(p == ".." for p in parts):
        raise rejected(f"archive entry escapes the root with '..': {name[:200]}", entry=name[:200])
    return "/".join(parts)


def _link_inside(entry: str, target: str) -> bool:
    if target.startswith("/") or "\\" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(entry), target))
    return not (joined == ".." or joined.startswith("../"))


class _Writer:
    """Writes files under a root while counting files and bytes against the limits."""

    def __init__(self, root: Path, limits: Limits, fmt: str) -> None:
        self.root, self.limits = root, limits
        self.result = Unpacked(format=fmt)
        self.written = 0
        self.entries = 0

    def _count_file(self, path: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise rejected(
                f"archive has more than {self.limits.max_files} files",
                limit_files=self.limits.max_files,
                entry=path,
            )

    def directory(self, path: str) -> None:
        self._count_file(path)
        if path:
            self._check_parents(path)
            (self.root / path).mkdir(parents=True, exist_ok=True)

    def file(self, path: str, stream: IO[bytes], mode: int = 0o644) -> None:
        if not path:
            return
        self._count_file(path)
        target = self.root / path
        if target.is_symlink() or target.exists():
            raise rejected(f"archive has the entry {path} twice", entry=path)
        self._check_parents(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with open(target, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                self.written += len(chunk)
                if self.written > self.limits.max_unpacked_bytes:
                    raise PayloadTooLarge(
                        f"archive unpacks to more than {self.limits.max_unpacked_bytes} bytes",
                        code="source_too_large_unpacked",
                        limit_bytes=self.limits.max_unpacked_bytes,
                        entry=path,
                    )
                digest.update(chunk)
                out.write(chunk)
        os.chmod(target, 0o755 if mode & 0o111 else 0o644)
        self.result.files.append(SourceFile(path=path, size=size, sha256=digest.hexdigest()))

    def symlink(self, path: str, target: str) -> None:
        if not _link_inside(path, target):
            raise rejected(
                f"symlink {path} points outside the source root ({target[:200]})",
                entry=path,
                link_target=target[:200],
            )
        self._count_file(path)
        self._check_parents(path)
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, self.root / path)
        self.result.symlinks[path] = target

    def hardlink(self, path: str, linkname: str, mode: int) -> None:
        """Copy the in-archive file ``linkname`` to ``path`` (never a file outside the root)."""
        link = safe_relative(linkname)
        source = self.root / link
        if not source.is_file() or source.is_symlink() or not self._inside(source):
            raise rejected(
                f"hardlink {path} points outside the archive's files ({link})",
                entry=path,
                link_target=linkname[:200],
            )
        with open(source, "rb") as original:
            self.file(path, original, mode)

    def check_links(self) -> None:
        """Refuse symlinks that resolve outside the root once every entry is in place.

        Each target was checked as text when written, but a target may pass through
        another symlink (``d/l -> ..`` then ``e -> d/l/..``): only the finished tree
        tells where a link really leads.
        """
        for path, target in self.result.symlinks.items():
            if not self._inside(self.root / path):
                raise rejected(
                    f"symlink {path} points outside the source root through another symlink",
                    entry=path,
                    link_target=target[:200],
                )

    def _inside(self, path: Path) -> bool:
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)

    def _check_parents(self, path: str) -> None:
        # A file must never be written through a symlinked directory.
        current = self.root
        for part in path.split("/")[:-1]:
            current = current / part
            if current.is_symlink():
                raise rejected(f"entry {path} is inside the symlink {part}", entry=path)


def _unpack_tar(source: Path, writer: _Writer) -> None:
    try:
        with tarfile.open(source, mode="r:*") as archive:
            for member in _tar_members(archive):
                path = safe_relative(member.name)
                if member.isdir():
                    writer.directory(path)
                elif member.isreg():
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    writer.file(path, extracted, member.mode)
                elif member.issym():
                    writer.symlink(path, member.linkname)
                elif member.islnk():
                    writer.hardlink(path, member.linkname, member.mode)
                else:
                    raise rejected(
                        f"archive entry {path} is a device, FIFO or other special file",
                        entry=path,
                    )
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as error:
        if isinstance(error, InvalidInput | PayloadTooLarge) or is_exhaustion(error):
            raise  # a full disk is the server's condition, not a corrupt archive
        raise rejected(f"archive is corrupt or truncated: {error}") from None


def _tar_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        member = archive.next()
        if member is None:
            return
        yield member


def _unpack_zip(source: Path, writer: _Writer) -> None:
    try:
        with zipfile.ZipFile(source) as archive:
            infos = archive.infolist()
            if len(infos) > writer.limits.max_files:
                raise rejected(
                    f"archive has more than {writer.limits.max_files} files",
                    limit_files=writer.limits.max_files,
                )
            for info in infos:
                path = safe_relative(info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if info.is_dir():
                    writer.directory(path)
                elif kind == stat.S_IFLNK:
                    with archive.open(info) as stream:  # bounded: the entry may be a bomb
                        raw = stream.read(MAX_LINK_TARGET + 1)
                    if len(raw) > MAX_LINK_TARGET:
                        raise rejected(f"symlink {path} has an over-long target", entry=path)
                    writer.symlink(path, raw.decode("utf-8", "replace"))
                elif kind in (0, stat.S_IFREG):
                    with archive.open(info) as stream:
                        writer.file(path, stream, (info.external_attr >> 16) & 0o777)
                else:
                    raise rejected(
                        f"archive entry {path} is a device, FIFO or other special file",
                        entry=path,
                    )
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        zlib.error,
    ) as error:
        if is_exhaustion(error):
            raise  # a full disk is the server's condition, not a corrupt archive
        raise rejected(f"archive is corrupt or unsupported: {error}") from None
    except RuntimeError as error:  # encrypted entries; NotImplementedError: compression method
        raise rejected(f"archive uses an unsupported feature: {error}") from None


def unpack(source: Path, destination: Path, *, limits: Limits) -> Unpacked:
    """Unpack ``source`` into ``destination`` (created; removed again on any refusal)."""
    with open(source, "rb") as handle:
        fmt = detect_format(handle.read(512))
    destination.mkdir(parents=True)
    writer = _Writer(destination, limits, fmt)
    try:
        if fmt == "zip":
            _unpack_zip(source, writer)
        else:
            _unpack_tar(source, writer)
        writer.check_links()
        if not writer.result.files:
            raise rejected("archive contains no files", format=fmt)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    writer.result.files.sort(key=lambda f: f.path)
    return writer.result


def read_head(stream: IO[bytes]) -> bytes:
    """The first 512 bytes of a seekable stream, leaving its position unchanged."""
    position = stream.tell()
    head = stream.read(512)
    stream.seek(position, io.SEEK_SET)
    return head
