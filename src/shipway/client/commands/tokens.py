"""``shipway tokens list|revoke|rotate``: the workspace's API tokens, through the API.

``shipway tokens create`` (in ``shipway.cli``) is the operator's command: it writes to the
database directly, so it works before any token exists.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.table import Table

from shipway.client.common import JsonOption, UsageError, connect, guarded, out, print_json

TokenArg = Annotated[str, typer.Argument(help="tok_…")]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds of ``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise UsageError(f"bad duration {text!r}: use e.g. 3600, 15m, 12h, 30d, 2w")
    return int(match.group(1)) * UNITS[match.group(2) or "s"]


def _state(row: dict[str, Any]) -> str:
    if row.get("rotated_to"):
        return f"rotated → {row['rotated_to']}"
    return "revoked" if row.get("revoked_at") else "active"


def tokens_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "SCOPES", "STATE", "EXPIRES", "LAST USED", "CREATED"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            row["name"] or "-",
            ",".join(row["scopes"]),
            _state(row),
            row["expires_at"] or "never",
            row["last_used_at"] or "never",
            row["created_at"],
        )
    return table


@guarded
def list_(json_output: JsonOption = False) -> None:
    """List the workspace's tokens (needs an admin token)."""
    with connect() as client:
        rows = list(client.request("GET", "/api/v1/tokens")["data"])
    if json_output:
        print_json(rows)
    else:
        out.print(tokens_table(rows))


@guarded
def revoke(token_id: TokenArg, json_output: JsonOption = False) -> None:
    """Revoke a token now: its next request is refused with 401."""
    with connect() as client:
        row = client.request("POST", f"/api/v1/tokens/{token_id}/revoke")
    if json_output:
        print_json(row)
    else:
        out.print(f"revoked [bold]{row['id']}[/] at {row['revoked_at']}")


@guarded
def rotate(
    token_id: TokenArg,
    grace: Annotated[
        str, typer.Option(help="How long the old secret still works: 0, 15m, 1h, 1d (max 7d)")
    ] = "0",
    json_output: JsonOption = False,
) -> None:
    """Replace a token's secret (same name and scopes); prints the new secret once."""
    body = {"grace_seconds": parse_duration(grace)}
    with connect() as client:
        row = client.request("POST", f"/api/v1/tokens/{token_id}/rotate", json_body=body)
    if json_output:
        print_json(row)
        return
    out.print(f"token [bold]{row['id']}[/] replaces {token_id} (old one refused from then on)")
    print(row["secret"])
