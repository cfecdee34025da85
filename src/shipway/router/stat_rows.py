"""Servers and counters from the rows of HAProxy's ``show stat`` (runtime API CSV)."""

from __future__ import annotations

import contextlib

from shipway.router.base import Server, ServerState, ServerStats


def server_from_row(row: dict[str, str]) -> Server:
    """A Server from a ``show stat`` row."""
    host, _, port = row["addr"].rpartition(":")
    status = row["status"]
    state: ServerState = (
        "maint" if status.startswith("MAINT") else "drain" if status == "DRAIN" else "ready"
    )
    return Server(
        name=row["svname"],
        address=host.strip("[]"),
        port=int(port),
        weight=stat_int(row.get("uweight") or row["weight"]),
        state=state,
    )


def stats_from_row(row: dict[str, str]) -> ServerStats:
    """A ServerStats from a ``show stat`` row (empty fields count as 0)."""
    return ServerStats(
        name=row["svname"],
        status=row["status"],
        weight=stat_int(row.get("uweight") or row["weight"]),
        scur=stat_int(row["scur"]),
        stot=stat_int(row["stot"]),
        req_tot=stat_int(row.get("req_tot", "")),
        hrsp_1xx=stat_int(row["hrsp_1xx"]),
        hrsp_2xx=stat_int(row["hrsp_2xx"]),
        hrsp_3xx=stat_int(row["hrsp_3xx"]),
        hrsp_4xx=stat_int(row["hrsp_4xx"]),
        hrsp_5xx=stat_int(row["hrsp_5xx"]),
        econ=stat_int(row["econ"]),
        eresp=stat_int(row["eresp"]),
        rtime_ms=stat_int(row["rtime"]),
        ttime_ms=stat_int(row["ttime"]),
    )


def stat_int(value: str | None) -> int:
    """A ``show stat`` field as an integer (empty or malformed: 0)."""
    with contextlib.suppress(TypeError, ValueError):
        return int(value or 0)
    return 0
