"""``shipway config list|set|unset``: config vars and secrets of an environment.

A change that reaches an environment serving a release rolls it out as a new release
of the same version (no rebuild); the command follows it like ``shipway promote``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from shipway.client.api import ShipwayClient
from shipway.client.commands.promote import follow_rollout
from shipway.client.common import (
    JsonOption,
    UsageError,
    connect,
    guarded,
    out,
    print_json,
    progress_console,
)

app = typer.Typer(
    help="Config vars and secrets of an environment (a change is a release).",
    no_args_is_help=True,
)
DeploymentOption = Annotated[
    str, typer.Option("--deployment", "-d", envvar="SHIPWAY_DEPLOYMENT", help="dep_…")
]
EnvOption = Annotated[str, typer.Option("--env", "-e", help="Environment")]
FollowOption = Annotated[
    bool, typer.Option("--follow/--no-follow", help="Follow the release until it ends")
]


def config_path(deployment_id: str, environment: str) -> str:
    return f"/api/v1/deployments/{deployment_id}/environments/{environment}/config"


def parse_assignments(pairs: list[str], *, stdin: Any = None) -> dict[str, str]:
    """``KEY=VALUE`` pairs as a dict; ``KEY=-`` reads the value from standard input (keeps a
    secret out of the shell history and the process list)."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(
                f"{name or pair!r}: give NAME=VALUE (NAME=- reads the value from stdin)"
            )
        if value == "-":
            value = (stdin or sys.stdin).read().rstrip("\n")
        values[name] = value
    return values


def config_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "VALUE", "VERSION", "UPDATED BY", "UPDATED AT"):
        table.add_column(column)
    for row in rows:
        value = "(secret, set)" if row["secret"] else row["value"]
        table.add_row(
            row["name"], value, f"v{row['version']}", row["updated_by"], row["updated_at"]
        )
    return table


@app.command("list")
@guarded
def list_(
    deployment: DeploymentOption, env: EnvOption = "production", json_output: JsonOption = False
) -> None:
    """List the environment's vars (secret values are never shown: only that they are set)."""
    with connect() as client:
        answer = client.request("GET", config_path(deployment, env))
    if json_output:
        print_json(answer)
    else:
        out.print(f"config v{answer['version']} of [bold]{env}[/] ([cyan]{deployment}[/])")
        out.print(config_table(answer["data"]))


@app.command("set")
@guarded
def set_(
    pairs: Annotated[list[str], typer.Argument(help="NAME=VALUE … (NAME=- reads stdin)")],
    deployment: DeploymentOption,
    secret: Annotated[
        bool, typer.Option("--secret", help="Write-only: encrypted, never shown again")
    ] = False,
    env: EnvOption = "production",
    follow: FollowOption = True,
    json_output: JsonOption = False,
) -> None:
    """Set vars; the environment's serving release is rolled out again with them."""
    values = parse_assignments(pairs)
    body = {"secrets": values} if secret else {"values": values}
    _change(deployment, env, body, follow=follow, json_output=json_output)


@app.command("unset")
@guarded
def unset(
    names: Annotated[list[str], typer.Argument(help="NAME …")],
    deployment: DeploymentOption,
    env: EnvOption = "production",
    follow: FollowOption = True,
    json_output: JsonOption = False,
) -> None:
    """Remove vars; the environment's serving release is rolled out again without them."""
    _change(deployment, env, {"unset": names}, follow=follow, json_output=json_output)


def _change(
    deployment_id: str, env: str, body: dict[str, Any], *, follow: bool, json_output: bool
) -> None:
    console = progress_console(json_output)
    with connect() as client:
        answer = client.request("PATCH", config_path(deployment_id, env), json_body=body)
        _report(console, answer, env)
        job = answer.get("job")
        if job is None or not follow:
            if json_output:
                print_json(answer)
            return
        code, result = _follow(client, answer, deployment_id, env, console)
    if json_output:
        print_json({**answer, **result})
    raise typer.Exit(code)


def _report(console: Any, answer: dict[str, Any], env: str) -> None:
    if not answer["changed"]:
        console.print(f"config v{answer['version']} of [bold]{env}[/] already says that")
    elif answer.get("job"):
        console.print(
            f"config v{answer['version']} of [bold]{env}[/]: release [cyan]"
            f"{answer['release_id']}[/], job [cyan]{answer['job']['id']}[/]"
        )
    else:
        console.print(
            f"config v{answer['version']} of [bold]{env}[/] saved (no release serves {env} "
            "yet: the next promote runs with it)"
        )


def _follow(
    client: ShipwayClient, answer: dict[str, Any], deployment_id: str, env: str, console: Any
) -> tuple[int, dict[str, Any]]:
    job = answer["job"]
    accepted = {
        "job": job,
        "release": {"id": answer["release_id"], "version_id": job["version_id"]},
    }
    return follow_rollout(
        client,
        accepted=accepted,
        deployment_id=deployment_id,
        environment=env,
        console=console,
        what=f"config release to {env}",
    )
