"""Cells and tables shared by every view: states, timestamps, durations, field lists."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

Json = dict[str, Any]

STATE_STYLES = {
    "ready": "green",
    "succeeded": "green",
    "ACTIVE": "bold green",
    "running": "cyan",
    "building": "cyan",
    "DEPLOYING": "cyan",
    "queued": "yellow",
    "created": "yellow",
    "DRAINING": "yellow",
    "UNHEALTHY": "bold red",
    "failed": "red",
    "FAILED": "red",
    "cancelled": "magenta",
    "ROLLED_BACK": "magenta",
    "archived": "dim",
    "RETIRED": "dim",
}


def styled(value: Any) -> Text:
    """A state or status, coloured by what it means."""
    if value is None:
        return Text("-", style="dim")
    text = str(value)
    return Text(text, style=STATE_STYLES.get(text, ""))


def plain(value: Any) -> str:
    """A cell: ``-`` for nothing, compact timestamps, everything else as text."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        return value[:19].replace("T", " ") + "Z"  # RFC 3339 without fractions
    return str(value)


def duration(seconds: float | None) -> str:
    """``4s``, ``2m05s``, ``1h02m`` (``-`` for none)."""
    if seconds is None:
        return "-"
    total = int(max(0.0, seconds))
    if total < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def age_of(timestamp: str | None, now: datetime | None = None) -> float | None:
    """Seconds since an RFC 3339 timestamp."""
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ((now or datetime.now(UTC)) - moment).total_seconds()


def scalars(data: Json) -> str:
    """``key=value, …`` of the scalar fields of ``data`` (floats to 4 significant digits)."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in data.items()
        if isinstance(v, str | int | float | bool) or v is None
    )


def column_table(*columns: str, title: str | None = None) -> Table:
    """A table with a header row of ``columns`` whose cells wrap instead of being cut."""
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")  # ids wrap whole, never cut with "…"
    return table


def key_values(rows: Iterable[tuple[str, Any]], *, title: str | None = None) -> Table:
    """A two-column table of fields."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else plain(value))
    if title:
        table.title, table.title_justify = title, "left"
    return table
