"""What every client command shares: exit codes, consoles, the API client, error handling."""

from __future__ import annotations

import functools
import json
import os
import secrets
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from shipway.client.api import ClientError, ShipwayClient
from shipway.client.config import ConfigError, load_config

P = ParamSpec("P")
R = TypeVar("R")


class ExitCode(IntEnum):
    """Exit codes of the client commands (documented in docs/cli.md)."""

    OK = 0
    FAILED = 1  # the job or rollout ran and failed (or was cancelled); diagnosis printed
    USAGE = 2  # bad arguments or no configuration
    API_ERROR = 3  # the API refused the request (4xx); its message printed
    UNREACHABLE = 4  # the API could not be reached, or failed (5xx)
    INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A command was called in a way that cannot work (exit 2)."""


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
IdempotencyOption = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="Reuse a key to retry safely (default: a new random key, printed)",
    ),
]


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 160  # piped (CI logs, files): wide rows rather than wrapped ids
    return console


out = _console(stderr=False)
err = _console(stderr=True)


def progress_console(json_output: bool) -> Console:
    """Where human progress goes: stderr when stdout carries JSON for a script."""
    return err if json_output else out


def connect() -> ShipwayClient:
    """An API client from the environment or the config file."""
    try:
        config = load_config()
    except ConfigError as error:
        raise UsageError(str(error)) from None
    if not config.token:
        raise UsageError(
            "no API token: set SHIPWAY_TOKEN, or run `shipway login --url URL --token TOKEN`"
        )
    return ShipwayClient(base_url=config.url, token=config.token)


def new_idempotency_key(given: str | None, *, quiet: bool = False) -> str:
    """The given key, or a new one (printed to stderr so a retry can reuse it)."""
    key = given or f"cli-{secrets.token_hex(12)}"
    if not given and not quiet:
        err.print(f"[dim]Idempotency-Key: {key}[/]")
    return key


CursorOption = Annotated[
    str | None, typer.Option(help="Start after this point (a next_cursor from a --json page)")
]


def collect_pages(
    fetch: Callable[[int, str | None], dict[str, Any]], *, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Pages of a list endpoint until ``limit`` rows: the API's page shape, ``{"data",
    "next_cursor"}``, whose cursor resumes where these rows end (None at the end)."""
    rows: list[Any] = []
    while True:
        page = fetch(max(1, min(200, limit - len(rows))), cursor)
        rows += page["data"]
        cursor = page.get("next_cursor")
        if not cursor or len(rows) >= limit:
            return {"data": rows, "next_cursor": cursor}


def print_json(data: Any) -> None:
    """JSON on stdout, one document."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def report_client_error(error: ClientError) -> ExitCode:
    """Print what the API said (or why it could not be reached); the exit code for it."""
    if error.status is None:
        err.print(f"[red]error:[/] {error.message}")
        err.print("[dim]check SHIPWAY_API_URL (or `shipway login --url`) and that the API runs[/]")
        return ExitCode.UNREACHABLE
    if error.route_missing:
        err.print(
            f"[red]error:[/] this API has no {error.method} {error.path} "
            f"(answered {error.status}): this server does not support it (yet)"
        )
        return ExitCode.API_ERROR
    err.print(f"[red]error ({error.status} {error.code}):[/] {error.message}")
    if error.not_shipway:
        err.print("[dim]check SHIPWAY_API_URL (or `shipway login --url`): the server's root URL[/]")
    details = {k: v for k, v in error.details.items() if k != "errors"}
    for problem in error.details.get("errors") or []:
        if isinstance(problem, dict):
            where = ".".join(str(p) for p in problem.get("loc") or [])
            err.print(f"  {where}: {problem.get('msg', '')}")
    if details:
        err.print(f"[dim]{json.dumps(details, default=str)}[/]")
    if error.status == 401:
        err.print("[dim]check SHIPWAY_TOKEN (or `shipway login --token`)[/]")
    return ExitCode.UNREACHABLE if error.unreachable else ExitCode.API_ERROR


def guarded(function: Callable[P, R]) -> Callable[P, R]:
    """Map errors to the documented exit codes and messages (no tracebacks)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except ClientError as error:
            raise typer.Exit(report_client_error(error)) from None
        except UsageError as error:
            err.print(f"[red]error:[/] {error}")
            raise typer.Exit(ExitCode.USAGE) from None
        except KeyboardInterrupt:
            err.print("\n[yellow]interrupted[/]")
            raise typer.Exit(ExitCode.INTERRUPTED) from None

    return wrapper


def resolve_deployment(client: ShipwayClient, *, version_id: str, given: str | None) -> str:
    """The deployment of a version: ``given``, else read from ``GET /versions/{id}``."""
    if given:
        return given
    version = client.get_version(version_id=version_id)
    return str(version["deployment_id"])


def report_end(end: dict[str, Any], *, console: Console, what: str) -> ExitCode:
    """Say how a followed job ended; print its diagnosis if it did not succeed."""
    from shipway.client.render.diagnosis import diagnosis

    state = end.get("state")
    if state == "succeeded":
        console.print(f"[green]✓[/] {what} succeeded [dim]({end.get('job_id')})[/]")
        return ExitCode.OK
    console.print(f"[red]✗[/] {what} {state} [dim]({end.get('job_id')})[/]")
    console.print(diagnosis(end.get("failure_reason"), end.get("failure_diagnostics")))
    return ExitCode.FAILED
