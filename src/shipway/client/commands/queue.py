"""``shipway queue [--watch]``: the operator view of ``GET /api/v1/queue``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from shipway.client.api import ClientError, ShipwayClient
from shipway.client.common import JsonOption, UsageError, connect, guarded, out, print_json
from shipway.client.render.queue import queue_view


@guarded
def queue(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes")] = 2.0,
    json_output: JsonOption = False,
) -> None:
    """Queue depth and age, running jobs, workers, stuck jobs, failures, waiting rollouts."""
    if interval <= 0:
        raise UsageError("--interval must be positive")
    with connect() as client:
        view = client.queue()
        if json_output:
            print_json(view)  # --json prints once, even with --watch
            return
        if not watch:
            out.print(queue_view(view))
            return
        if not out.is_terminal:  # piped (CI logs): one snapshot per refresh
            _print_snapshots(client, view, interval)
            return
        with Live(queue_view(view), console=out, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(_refreshed(client, view), refresh=True)


def _refreshed(client: ShipwayClient, last: dict[str, Any]) -> RenderableType:
    """The view now; on a transient failure the last one with a note (4xx: raised)."""
    try:
        return queue_view(client.queue())
    except ClientError as error:
        if not error.unreachable:
            raise
        note = Text(f"cannot refresh ({error.message}); retrying…", style="bold red")
        return Group(queue_view(last), note)


def _print_snapshots(client: ShipwayClient, view: dict[str, Any], interval: float) -> None:
    while True:
        out.print(queue_view(view))
        out.print()
        time.sleep(interval)
        try:
            view = client.queue()
        except ClientError as error:
            if not error.unreachable:
                raise
            out.print(f"[bold red]cannot refresh ({error.message}); retrying…[/]")
