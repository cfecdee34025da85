"""``shipway queue [--watch]``: the operator view of ``GET /api/v1/queue``."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from shipway.client.api import ClientError
from shipway.client.common import JsonOption, UsageError, connect, guarded, out, print_json
from shipway.client.render import queue_view


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
        with Live(queue_view(view), console=out, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                try:
                    view = client.queue()
                    live.update(queue_view(view), refresh=True)
                except ClientError as error:
                    if not error.unreachable:
                        raise
                    note = Text(f"cannot refresh ({error.message}); retrying…", style="bold red")
                    live.update(Group(queue_view(view), note), refresh=True)
