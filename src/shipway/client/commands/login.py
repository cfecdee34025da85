"""``shipway login``: store the API URL and token in the config file."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from shipway.client.api import ShipwayClient
from shipway.client.common import guarded, out
from shipway.client.config import DEFAULT_URL, save_config


@guarded
def login(
    token: Annotated[str, typer.Option(help="API token (from `shipway tokens create`)")],
    url: Annotated[str, typer.Option(help="API base URL")] = DEFAULT_URL,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the token against the API first")
    ] = True,
) -> None:
    """Save URL and token to the config file ($SHIPWAY_CONFIG or ~/.config/shipway/config.toml)."""
    if verify:
        with ShipwayClient(base_url=url, token=token) as client:
            client.list_jobs(limit=1)  # any read: 401/403/unreachable exit 3/4
    path = save_config(url=url, token=token)
    out.print(f"saved API {url} and token to {path}")
    if os.environ.get("SHIPWAY_TOKEN") or os.environ.get("SHIPWAY_API_URL"):
        out.print("[yellow]note:[/] SHIPWAY_TOKEN/SHIPWAY_API_URL are set and win over the file")
