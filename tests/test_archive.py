"""Safe unpacking of source archives: manifests, and every hostile archive refused cleanly.

Each refusal asserts its error code and that the destination folder is gone
afterwards (nothing half-unpacked is left behind). The hostile archives are
built by functions shared with the API tests (tests/test_api_publish.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
import tempfile
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipway.errors import InvalidInput, PayloadTooLarge, ShipwayError, UnsupportedMediaType
from shipway.sources.archive import Limits, Unpacked, safe_relative, unpack

LIMITS = Limits(max_unpacked_bytes=1 << 20, max_files=50)
SITE: dict[str, bytes] = {
    "index.html": b"<!doctype html><h1>hello from shipway</h1>\n",
    "css/site.css": b"body { color: #123; }\n",
    "assets/deep/blob.bin": bytes(range(256)) * 40,
    "empty.txt": b"",
}


# --------------------------------------------------------------------------- builders


@dataclass
class Entry:
    """One tar member: a regular file unless ``type`` says otherwise."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644


def tar_bytes(entries: list[Entry], *, gz: bool = False) -> bytes:
    """A tar (or tar.gz) holding ``entries`` exactly as given (no normalisation)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.mode = entry.mode
            info.linkname = entry.linkname
            if entry.type == tarfile.REGTYPE:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def zip_bytes(
    files: dict[str, bytes] | list[tuple[str, bytes]],
    *,
    symlinks: dict[str, str] | None = None,
    special: dict[str, int] | None = None,
) -> bytes:
    """A deflated zip of ``files`` plus symlink / special-file entries (unix attributes)."""
    items = list(files.items()) if isinstance(files, dict) else list(files)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is what some tests want
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in items:
                archive.writestr(name, data)
            for name, target in (symlinks or {}).items():
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, target)
            for name, kind in (special or {}).items():
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (kind | 0o644) << 16
                archive.writestr(info, b"")
    return buffer.getvalue()


def site_archive(fmt: str, files: dict[str, bytes] = SITE) -> bytes:
    """``files`` as a tar, tar.gz or zip (with directory entries in the tars)."""
    if fmt == "zip":
        return zip_bytes(files)
    entries: list[Entry] = []
    seen: set[str] = set()
    for name, data in files.items():
        parent = posixpath.dirname(name)
        parts = parent.split("/") if parent else []
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in seen:
                seen.add(folder)
                entries.append(Entry(folder, type=tarfile.DIRTYPE, mode=0o755))
        entries.append(Entry(name, data))
    return tar_bytes(entries, gz=fmt == "tar.gz")


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced lazily (so a bomb is never held in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = b"\0" * n
        self.left -= n
        return n


def tar_gz_bomb(size: int) -> bytes:
    """A tar.gz of one all-zero file of ``size`` bytes (tiny once compressed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        archive.addfile(info, io.BufferedReader(_Zeros(size)))
    return buffer.getvalue()


def zip_bomb(size: int, *, as_symlink: bool = False) -> bytes:
    """A zip of one all-zero entry of ``size`` bytes, deflated (optionally a symlink)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        info = zipfile.ZipInfo("zeros.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        if as_symlink:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        with archive.open(info, "w", force_zip64=True) as out:
            chunk = b"\0" * (1 << 20)
            for _ in range(size // len(chunk)):
                out.write(chunk)
    return buffer.getvalue()


def lying_tar(claimed: int) -> bytes:
    """A tar whose only member's header claims ``claimed`` bytes but holds 1 KiB."""
    data = bytearray(tar_bytes([Entry("liar.txt", b"x" * 1024)]))
    header = data[:512]
    header[124:136] = b"%011o\0" % claimed
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[:512] = header
    return bytes(data[: 512 + 1024])  # and no end-of-archive blocks


# Every hostile archive: name -> (bytes, error class, error code). Small limits apply:
HOSTILE_LIMITS = Limits(max_unpacked_bytes=1 << 20, max_files=10)
HOSTILE: dict[str, tuple[Callable[[], bytes], type[ShipwayError], str]] = {
    "absolute_path": (
        lambda: tar_bytes([Entry("index.html", b"ok"), Entry("/etc/cron.d/evil", b"x")]),
        InvalidInput,
        "source_invalid",
    ),
    "absolute_path_zip": (
        lambda: zip_bytes({"index.html": b"ok", "/tmp/evil": b"x"}),
        InvalidInput,
        "source_invalid",
    ),
    "windows_drive_zip": (
        lambda: zip_bytes({"C:\\evil.txt": b"x"}),
        InvalidInput,
        "source_invalid",
    ),
    "dotdot": (
        lambda: tar_bytes([Entry("index.html", b"ok"), Entry("site/../../evil", b"x")]),
        InvalidInput,
        "source_invalid",
    ),
    "dotdot_zip_backslash": (
        lambda: zip_bytes({"a\\..\\..\\evil.txt": b"x"}),
        InvalidInput,
        "source_invalid",
    ),
    "symlink_absolute": (
        lambda: tar_bytes(
            [Entry("index.html", b"ok"), Entry("passwd", type=tarfile.SYMTYPE, linkname="/etc")]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "symlink_relative_escape": (
        lambda: tar_bytes(
            [
                Entry("index.html", b"ok"),
                Entry("a/b", type=tarfile.DIRTYPE),
                Entry("a/b/up", type=tarfile.SYMTYPE, linkname="../../.."),
            ]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "symlink_escape_zip": (
        lambda: zip_bytes({"index.html": b"ok"}, symlinks={"up": "../outside"}),
        InvalidInput,
        "source_invalid",
    ),
    "symlink_escape_through_symlink": (
        # d/l -> .. is the root; e -> d/l/.. looks like "d" as text but is the root's parent.
        lambda: tar_bytes(
            [
                Entry("index.html", b"ok"),
                Entry("d", type=tarfile.DIRTYPE),
                Entry("d/l", type=tarfile.SYMTYPE, linkname=".."),
                Entry("e", type=tarfile.SYMTYPE, linkname="d/l/.."),
            ]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "file_through_symlinked_dir": (
        lambda: tar_bytes(
            [
                Entry("css", type=tarfile.DIRTYPE),
                Entry("alias", type=tarfile.SYMTYPE, linkname="css"),
                Entry("alias/evil.css", b"x"),
            ]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "dir_through_symlink_out": (
        lambda: tar_bytes(
            [
                Entry("index.html", b"ok"),
                Entry("d", type=tarfile.DIRTYPE),
                Entry("d/l", type=tarfile.SYMTYPE, linkname=".."),
                Entry("e", type=tarfile.SYMTYPE, linkname="d/l/.."),
                Entry("e/made", type=tarfile.DIRTYPE),  # would be created beside the root
            ]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "hardlink_outside": (
        lambda: tar_bytes(
            [Entry("index.html", b"ok"), Entry("h", type=tarfile.LNKTYPE, linkname="../secret")]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "hardlink_absolute": (
        lambda: tar_bytes(
            [Entry("index.html", b"ok"), Entry("h", type=tarfile.LNKTYPE, linkname="/etc/hosts")]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "hardlink_through_symlink": (
        lambda: tar_bytes(
            [
                Entry("index.html", b"ok"),
                Entry("d", type=tarfile.DIRTYPE),
                Entry("d/l", type=tarfile.SYMTYPE, linkname=".."),
                # g looks like "d/tree" as text but leads two levels above the root.
                Entry("g", type=tarfile.SYMTYPE, linkname="d/l/../tree/d/l/../.."),
                Entry("stolen", type=tarfile.LNKTYPE, linkname="g/secret"),
            ]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "hardlink_missing": (
        lambda: tar_bytes(
            [Entry("index.html", b"ok"), Entry("h", type=tarfile.LNKTYPE, linkname="nope.txt")]
        ),
        InvalidInput,
        "source_invalid",
    ),
    "char_device": (
        lambda: tar_bytes([Entry("index.html", b"ok"), Entry("null", type=tarfile.CHRTYPE)]),
        InvalidInput,
        "source_invalid",
    ),
    "block_device": (
        lambda: tar_bytes([Entry("index.html", b"ok"), Entry("sda", type=tarfile.BLKTYPE)]),
        InvalidInput,
        "source_invalid",
    ),
    "fifo": (
        lambda: tar_bytes([Entry("index.html", b"ok"), Entry("pipe", type=tarfile.FIFOTYPE)]),
        InvalidInput,
        "source_invalid",
    ),
    "fifo_zip": (
        lambda: zip_bytes({"index.html": b"ok"}, special={"pipe": stat.S_IFIFO}),
        InvalidInput,
        "source_invalid",
    ),
    "too_many_files": (
        lambda: tar_bytes([Entry(f"f{i}.txt", b"x") for i in range(11)], gz=True),
        InvalidInput,
        "source_invalid",
    ),
    "too_many_files_zip": (
        lambda: zip_bytes({f"f{i}.txt": b"x" for i in range(11)}),
        InvalidInput,
        "source_invalid",
    ),
    "unpacked_bomb_tar_gz": (
        lambda: tar_gz_bomb(16 << 20),
        PayloadTooLarge,
        "source_too_large_unpacked",
    ),
    "unpacked_bomb_zip": (
        lambda: zip_bomb(16 << 20),
        PayloadTooLarge,
        "source_too_large_unpacked",
    ),
    "unpacked_many_small_files": (
        lambda: tar_bytes([Entry(f"part{i}.bin", b"\1" * (300 << 10)) for i in range(4)], gz=True),
        PayloadTooLarge,
        "source_too_large_unpacked",
    ),
    "lying_header_size": (lambda: lying_tar(1 << 30), InvalidInput, "source_invalid"),
    "truncated_tar": (
        lambda: tar_bytes([Entry("index.html", b"a" * 5000)])[:2048],
        InvalidInput,
        "source_invalid",
    ),
    "truncated_tar_gz": (
        lambda: tar_bytes([Entry("index.html", os.urandom(20000))], gz=True)[:4000],
        InvalidInput,
        "source_invalid",
    ),
    "corrupt_tar_gz": (
        # Corrupt past the first header: zlib fails while the file is being written.
        lambda: _corrupt(tar_bytes([Entry("index.html", _text(400_000))], gz=True), 1000),
        InvalidInput,
        "source_invalid",
    ),
    "corrupt_zip": (
        lambda: _corrupt(zip_bytes({"index.html": _text(20000)}), 200),
        InvalidInput,
        "source_invalid",
    ),
    "encrypted_zip": (lambda: _encrypted_zip(), InvalidInput, "source_invalid"),
    "unknown_format": (
        lambda: b"just some text, not an archive\n" * 40,
        UnsupportedMediaType,
        "unsupported_archive",
    ),
    "bzip2_tar": (
        lambda: _bz2_tar(),
        UnsupportedMediaType,
        "unsupported_archive",
    ),
    "empty_upload": (lambda: b"", UnsupportedMediaType, "unsupported_archive"),
    "empty_tar_gz": (lambda: tar_bytes([], gz=True), InvalidInput, "source_invalid"),
    "only_directories": (
        lambda: tar_bytes([Entry("a", type=tarfile.DIRTYPE), Entry("a/b", type=tarfile.DIRTYPE)]),
        InvalidInput,
        "source_invalid",
    ),
    "empty_zip": (lambda: zip_bytes({}), InvalidInput, "source_invalid"),
    "duplicate_entry": (
        lambda: tar_bytes([Entry("index.html", b"one"), Entry("index.html", b"two")]),
        InvalidInput,
        "source_invalid",
    ),
    "duplicate_entry_zip": (
        lambda: zip_bytes([("index.html", b"one"), ("index.html", b"two")]),
        InvalidInput,
        "source_invalid",
    ),
    "symlink_over_file": (
        lambda: tar_bytes(
            [
                Entry("index.html", b"one"),
                Entry("index.html", type=tarfile.SYMTYPE, linkname="other.html"),
            ]
        ),
        InvalidInput,
        "source_invalid",
    ),
}


def _text(size: int) -> bytes:
    return b"".join(b"line %d of a compressible text file\n" % i for i in range(size // 30))[:size]


def _corrupt(data: bytes, offset: int) -> bytes:
    broken = bytearray(data)
    for i in range(offset, offset + 24):
        broken[i] ^= 0x55
    return bytes(broken)


def _encrypted_zip() -> bytes:
    data = bytearray(zip_bytes({"index.html": b"secret"}))
    data[6] |= 0x1  # "encrypted" flag of the local header ...
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x1  # ... and of the central directory
    return bytes(data)


def _bz2_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as archive:
        info = tarfile.TarInfo("index.html")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"ok"))
    return buffer.getvalue()


# --------------------------------------------------------------------------- helpers


def _unpack(tmp_path: Path, data: bytes, limits: Limits = LIMITS) -> tuple[Unpacked, Path]:
    """Unpack like the store does: ``staging/archive`` into ``staging/tree``."""
    (tmp_path / "staging").mkdir(exist_ok=True)
    source = tmp_path / "staging" / "archive"
    source.write_bytes(data)
    destination = tmp_path / "staging" / "tree"
    return unpack(source, destination, limits=limits), destination


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- good archives


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
def test_unpack_writes_files_and_manifest(tmp_path: Path, fmt: str) -> None:
    result, tree = _unpack(tmp_path, site_archive(fmt))

    assert result.format == fmt
    expected = [{"path": p, "size": len(d), "sha256": _sha(d)} for p, d in sorted(SITE.items())]
    manifest = result.manifest()
    assert manifest["files"] == expected
    assert manifest["file_count"] == len(SITE)
    assert manifest["total_bytes"] == sum(len(d) for d in SITE.values())
    for path, data in SITE.items():
        assert (tree / path).read_bytes() == data
    on_disk = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert on_disk == sorted(SITE)
    assert result.has("index.html") and not result.has("css")


def test_modes_keep_only_the_executable_bit(tmp_path: Path) -> None:
    data = tar_bytes(
        [
            Entry("run.sh", b"#!/bin/sh\n", mode=0o4755),  # setuid dropped
            Entry("world.txt", b"w", mode=0o666),  # world-writable dropped
        ]
    )
    _, tree = _unpack(tmp_path, data)
    assert stat.S_IMODE((tree / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "world.txt").stat().st_mode) == 0o644


def test_names_are_normalised(tmp_path: Path) -> None:
    data = tar_bytes([Entry("./a//b/./c.txt", b"c"), Entry("./", type=tarfile.DIRTYPE)])
    result, tree = _unpack(tmp_path, data)
    assert [f.path for f in result.files] == ["a/b/c.txt"]
    assert (tree / "a" / "b" / "c.txt").read_bytes() == b"c"


def test_symlinks_inside_the_root_are_kept(tmp_path: Path) -> None:
    data = tar_bytes(
        [
            Entry("index.html", b"home"),
            Entry("css", type=tarfile.DIRTYPE),
            Entry("css/site.css", b"body{}"),
            Entry("home.html", type=tarfile.SYMTYPE, linkname="index.html"),
            Entry("styles", type=tarfile.SYMTYPE, linkname="css"),
            Entry("css/up.html", type=tarfile.SYMTYPE, linkname="../index.html"),
            Entry("css/self", type=tarfile.SYMTYPE, linkname=".."),
        ]
    )
    result, tree = _unpack(tmp_path, data)
    assert [f.path for f in result.files] == ["css/site.css", "index.html"]
    assert result.symlinks == {
        "home.html": "index.html",
        "styles": "css",
        "css/up.html": "../index.html",
        "css/self": "..",
    }
    assert os.readlink(tree / "home.html") == "index.html"
    assert (tree / "styles" / "site.css").read_bytes() == b"body{}"
    assert (tree / "css" / "up.html").read_bytes() == b"home"


def test_zip_symlink_inside_is_kept(tmp_path: Path) -> None:
    result, tree = _unpack(
        tmp_path, zip_bytes({"index.html": b"x"}, symlinks={"alias": "index.html"})
    )
    assert result.symlinks == {"alias": "index.html"}
    assert (tree / "alias").read_bytes() == b"x"


def test_hardlink_to_an_archived_file_is_copied(tmp_path: Path) -> None:
    data = tar_bytes(
        [
            Entry("index.html", b"same bytes"),
            Entry("copy.html", type=tarfile.LNKTYPE, linkname="index.html"),
        ]
    )
    result, tree = _unpack(tmp_path, data)
    assert [(f.path, f.size, f.sha256) for f in result.files] == [
        ("copy.html", 10, _sha(b"same bytes")),
        ("index.html", 10, _sha(b"same bytes")),
    ]
    assert (tree / "copy.html").read_bytes() == b"same bytes"
    assert (tree / "copy.html").stat().st_nlink == 1  # a copy, not a link to anything


def test_at_the_limits_is_accepted(tmp_path: Path) -> None:
    limits = Limits(max_unpacked_bytes=3000, max_files=3)
    data = tar_bytes([Entry(f"f{i}", b"z" * 1000) for i in range(3)])
    result, _ = _unpack(tmp_path, data, limits)
    assert result.total_bytes == 3000


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    build, error_class, code = HOSTILE[name]
    (tmp_path / "secret").write_text("do not read me")
    with pytest.raises(error_class) as raised:
        _unpack(tmp_path, build(), HOSTILE_LIMITS)
    assert raised.value.code == code, raised.value.message
    assert not (tmp_path / "staging" / "tree").exists()
    # Nothing was created anywhere else (no directory made through a link, no copy).
    leftovers = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert leftovers == {"secret", "staging", "staging/archive"}


def test_bombs_are_small_when_compressed() -> None:
    assert len(tar_gz_bomb(16 << 20)) < 64 << 10
    assert len(zip_bomb(16 << 20)) < 64 << 10


def test_bomb_error_names_the_limit(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        _unpack(tmp_path, tar_gz_bomb(4 << 20), Limits(max_unpacked_bytes=100_000, max_files=5))
    assert raised.value.details["limit_bytes"] == 100_000
    assert raised.value.details["entry"] == "zeros.bin"


def test_too_many_files_error_names_the_limit(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as raised:
        _unpack(tmp_path, zip_bytes({f"f{i}": b"" for i in range(4)}), Limits(1000, 3))
    assert raised.value.details["limit_files"] == 3


def test_zip_symlink_bomb_is_read_with_bounded_memory(tmp_path: Path) -> None:
    data = zip_bomb(48 << 20, as_symlink=True)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput):
            _unpack(tmp_path, data, Limits(max_unpacked_bytes=1 << 30, max_files=5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading one symlink target took {peak} bytes"
    assert not (tmp_path / "staging" / "tree").exists()


def test_empty_plain_tar_is_refused(tmp_path: Path) -> None:
    # An empty tar is zero blocks only (no "ustar" magic): refused as unsupported.
    with pytest.raises((InvalidInput, UnsupportedMediaType)):
        _unpack(tmp_path, tar_bytes([]))
    assert not (tmp_path / "staging" / "tree").exists()


def test_gzip_of_something_else_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as raised:
        _unpack(tmp_path, gzip.compress(b"<h1>not a tar</h1>" * 100))
    assert raised.value.code == "source_invalid"
    assert not (tmp_path / "staging" / "tree").exists()


# --------------------------------------------------------------------------- properties

SEGMENTS = st.sampled_from(
    ["", ".", "..", "...", "a", "b.txt", "C:", "c:\\x", "\\", "..\\..", "x\x00y", "é", " ", "~"]
)
NAMES = st.one_of(st.text(max_size=40), st.lists(SEGMENTS, max_size=8).map("/".join))


@given(NAMES)
@settings(max_examples=400, deadline=None)
def test_safe_relative_never_escapes(name: str) -> None:
    try:
        clean = safe_relative(name)
    except InvalidInput as error:
        assert error.code == "source_invalid"
        return
    assert not clean.startswith("/")
    assert "\\" not in clean and "\x00" not in clean
    parts = clean.split("/") if clean else []
    assert all(p not in ("", ".", "..") for p in parts)
    assert posixpath.normpath(posixpath.join("/root", clean)).startswith("/root")
    assert safe_relative(clean) == clean


@given(
    st.lists(
        st.tuples(
            NAMES,
            st.sampled_from(["file", "dir", "symlink", "hardlink"]),
            st.one_of(NAMES, st.sampled_from(["..", "../x", "a", "a/../..", "/", "b.txt"])),
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_tar_unpacks_inside_or_is_refused_cleanly(
    members: list[tuple[str, str, str]],
) -> None:
    kinds = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
    }
    entries = [
        Entry(
            name.replace("\x00", "") or "x",
            b"data" if kind == "file" else b"",
            type=kinds[kind],
            linkname=target.replace("\x00", ""),
        )
        for name, kind, target in members
    ]
    try:
        data = tar_bytes(entries)
    except (ValueError, UnicodeError):
        return  # tarfile itself cannot write that name
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        (base / "outside").mkdir()
        destination = base / "in" / "tree"
        source = base / "upload"
        source.write_bytes(data)
        try:
            result = unpack(source, destination, limits=LIMITS)
        except (InvalidInput, UnsupportedMediaType) as error:
            assert error.code in ("source_invalid", "unsupported_archive")
            assert not destination.exists()
        else:
            root = os.path.realpath(destination)
            for path in [*(f.path for f in result.files), *result.symlinks]:
                real = os.path.realpath(destination / path)
                assert real == root or real.startswith(root + os.sep), path
        assert list((base / "outside").iterdir()) == []
        assert sorted(p.name for p in base.iterdir()) in (
            ["in", "outside", "upload"],
            ["outside", "upload"],
        )
