"""Servers and counters from the rows of HAProxy's ``show stat`` (runtime API CSV) and
``show servers state``."""

from __future__ import annotations

import contextlib

from shipway.router.base import Server, ServerState, ServerStats

# srv_admin_state bits (HAProxy's server.h): forced, inherited, config and resolution
# maintenance; forced and inherited drain.
_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10


def server_from_state_row(row: dict[str, str]) -> Server:
    """A Server from a ``show servers state`` row."""
    admin = stat_int(row["srv_admin_state"])
    state: ServerState = (
        "maint" if admin & _MAINT_BITS else "drain" if admin & _DRAIN_BITS else "ready"
    )
    return Server(
        name=row["srv_name"],
        address=row["srv_addr"],
        port=stat_int(row["srv_port"]),
        weight=stat_int(row["srv_uweight"]),
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
