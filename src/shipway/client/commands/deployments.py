"""``shipway deployments create|list|show``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipway.client.api import ShipwayClient
from shipway.client.common import (
    CursorOption,
    JsonOption,
    collect_pages,
    connect,
    guarded,
    out,
    print_json,
)
from shipway.client.render.records import deployment_view, deployments_table

app = typer.Typer(help="Deployments: one app or site each.", no_args_is_help=True)


def create_deployment(
    client: ShipwayClient,
    *,
    name: str,
    kind: str,
    environments: list[str],
    replicas: int | None = None,
    runtime_port: int | None = None,
    runtime_command: str | None = None,
    health_check_path: str | None = None,
    hardened: bool = True,
) -> dict[str, Any]:
    """Create a deployment; only the settings given are sent (the API fills defaults)."""
    body: dict[str, Any] = {"name": name, "kind": kind}
    optional = {
        "replicas": replicas,
        "runtime_port": runtime_port,
        "runtime_command": runtime_command,
        "health_check_path": health_check_path,
        "environments": environments or None,
        "hardened": None if hardened else False,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return client.create_deployment(body=body)


def list_all_deployments(
    client: ShipwayClient, *, limit: int, cursor: str | None = None
) -> dict[str, Any]:
    """Deployments, following pages until ``limit`` rows (``{"data", "next_cursor"}``)."""
    return collect_pages(
        lambda size, after: client.list_deployments(limit=size, cursor=after),
        limit=limit,
        cursor=cursor,
    )


@app.command("create")
@guarded
def create(
    name: Annotated[str, typer.Argument(help="Name (letters, digits, . _ -)")],
    kind: Annotated[str, typer.Option(help="static (a folder of files) or container")] = "static",
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Environment (repeatable; default production)")
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas per environment")] = None,
    port: Annotated[int | None, typer.Option(help="Port the app listens on")] = None,
    command: Annotated[str | None, typer.Option(help="Runtime command")] = None,
    health_path: Annotated[
        str | None, typer.Option(help="Health check path, e.g. /healthz")
    ] = None,
    hardened: Annotated[
        bool,
        typer.Option(
            "--hardened/--no-hardening",
            help="Run replicas hardened (docs/security.md); --no-hardening: the image's defaults",
        ),
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Create a deployment."""
    with connect() as client:
        row = create_deployment(
            client,
            name=name,
            kind=kind,
            environments=env or [],
            replicas=replicas,
            runtime_port=port,
            runtime_command=command,
            health_check_path=health_path,
            hardened=hardened,
        )
    if json_output:
        print_json(row)
    else:
        out.print(f"created deployment [bold]{row['name']}[/] [cyan]{row['id']}[/]")
        out.print(deployment_view(row))


@app.command("list")
@guarded
def list_(
    limit: Annotated[int, typer.Option(help="At most this many")] = 200,
    cursor: CursorOption = None,
    json_output: JsonOption = False,
) -> None:
    """List deployments of the token's workspace (--json: the page, with next_cursor)."""
    with connect() as client:
        page = list_all_deployments(client, limit=limit, cursor=cursor)
    rows = page["data"]
    if json_output:
        print_json(page)
    elif rows:
        out.print(deployments_table(rows))
    else:
        out.print("no deployments yet: [bold]shipway deployments create NAME[/]")


@app.command("show")
@guarded
def show(
    deployment_id: Annotated[str, typer.Argument(help="dep_…")],
    json_output: JsonOption = False,
) -> None:
    """A deployment with each environment's active version and release status."""
    with connect() as client:
        row = client.get_deployment(deployment_id=deployment_id)
    if json_output:
        print_json(row)
    else:
        out.print(deployment_view(row))
