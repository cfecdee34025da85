"""What every benchmark shares: result sections, percentiles, scratch services, settings."""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from shipway.config import get_settings

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One figure beside its baseline: ``ratio`` is figure / baseline when both are times."""

    name: str
    figure: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass
class Section:
    """A benchmark's results: a titled table plus free-form notes."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(
        self,
        name: str,
        figure: str,
        *,
        baseline: str = "",
        ratio: float | None = None,
        target: str = "",
        met: bool | None = None,
    ) -> None:
        """Append a row."""
        self.rows.append(Row(name, figure, baseline, ratio, target, met))

    def markdown(self) -> str:
        """The section as Markdown (a table and its notes)."""
        lines = [f"## {self.title}", ""]
        if self.error:
            lines += ["**failed:**", "", "```", self.error.strip(), "```", ""]
        if self.rows:
            lines += [
                "| measurement | shipway | baseline | ratio | target | met |",
                "|---|---:|---:|---:|---|---|",
            ]
            for row in self.rows:
                ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
                met = "" if row.met is None else ("yes" if row.met else "**no**")
                lines.append(
                    f"| {row.name} | {row.figure} | {row.baseline} | {ratio} | {row.target} "
                    f"| {met} |"
                )
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        lines.append(f"_section took {self.seconds:.0f} s_")
        return "\n".join(lines) + "\n"


def ms(seconds: float) -> str:
    """Seconds as a millisecond figure."""
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def in_turn(items: Sequence[T], round_number: int) -> list[T]:
    """``items`` rotated by ``round_number``: measured in this order round after round,
    each is first, second, ... equally often, so whatever a position costs (the previous
    subject's writes still being flushed, a cache warmed by it) is shared out rather than
    charged to the one measured last."""
    start = round_number % len(items)
    return [*items[start:], *items[:start]]


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.1f} GiB RAM"
    except (ValueError, OSError):
        pass
    docker_version = ""
    with suppress(OSError, subprocess.SubprocessError):
        docker_version = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}){memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
        + (f", Docker {docker_version}" if docker_version else "")
    )


def use_settings(values: dict[str, str]) -> None:
    """Set SHIPWAY_* variables of this process and drop the cached settings. The per-token
    rate limit is off unless ``values`` turn it on: a benchmark sends one token's requests
    as fast as the API answers them, which is what it measures."""
    for key in [k for k in os.environ if k.startswith("SHIPWAY_")]:
        del os.environ[key]
    os.environ.update({"SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE": "0", **values})
    get_settings.cache_clear()


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder removed at the end (PostgreSQL data dirs included)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o755)  # PostgreSQL runs as another user when we are root
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def migrate(database_url: str) -> None:
    """Bring ``database_url`` to the newest schema (alembic, as ``shipway db upgrade``)."""
    from shipway.migrate import upgrade

    previous = os.environ.get("SHIPWAY_DATABASE_URL")
    os.environ["SHIPWAY_DATABASE_URL"] = database_url
    get_settings.cache_clear()
    try:
        upgrade()
    finally:
        if previous is None:
            os.environ.pop("SHIPWAY_DATABASE_URL", None)
        else:
            os.environ["SHIPWAY_DATABASE_URL"] = previous
        get_settings.cache_clear()


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m bench.<name>``: the module's first line, and ``--quick``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    return parser


def print_section(measure: Callable[[], Section]) -> int:
    """Run one benchmark alone: time it and print its section as markdown."""
    started = time.perf_counter()
    section = measure()
    section.seconds = time.perf_counter() - started
    print(section.markdown())
    return 0
