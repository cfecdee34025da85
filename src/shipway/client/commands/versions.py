"""``shipway versions list|show`` and ``shipway logs``."""

from __future__ import annotations

import sys
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
    resolve_deployment,
)
from shipway.client.render.records import version_view, versions_table

app = typer.Typer(help="Versions: immutable builds of a deployment.", no_args_is_help=True)

DeploymentOption = Annotated[
    str | None,
    typer.Option("--deployment", "-d", help="dep_… (default: looked up from the version)"),
]


def list_all_versions(
    client: ShipwayClient,
    *,
    deployment_id: str,
    state: str | None,
    environment: str | None,
    limit: int,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Versions newest first, following pages until ``limit`` rows (``{"data",
    "next_cursor"}``)."""
    return collect_pages(
        lambda size, after: client.list_versions(
            deployment_id=deployment_id,
            state=state,
            environment=environment,
            limit=size,
            cursor=after,
        ),
        limit=limit,
        cursor=cursor,
    )


def full_version(
    client: ShipwayClient, *, version_id: str, deployment_id: str | None, environment: str
) -> dict[str, Any]:
    """The full version row (its deployment looked up if not given)."""
    deployment = resolve_deployment(client, version_id=version_id, given=deployment_id)
    return client.get_deployment_version(
        deployment_id=deployment, version_id=version_id, environment=environment
    )


@app.command("list")
@guarded
def list_(
    deployment_id: Annotated[str, typer.Argument(help="dep_…")],
    state: Annotated[
        str | None, typer.Option(help="created, building, ready, failed, archived")
    ] = None,
    env: Annotated[str | None, typer.Option("--env", help="Only versions released there")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 50,
    cursor: CursorOption = None,
    json_output: JsonOption = False,
) -> None:
    """A deployment's versions, newest first (--json: the page, with next_cursor)."""
    with connect() as client:
        page = list_all_versions(
            client,
            deployment_id=deployment_id,
            state=state,
            environment=env,
            limit=limit,
            cursor=cursor,
        )
    rows = page["data"]
    if json_output:
        print_json(page)
    elif rows:
        out.print(versions_table(rows))
    else:
        out.print("no versions: [bold]shipway publish PATH --deployment ID[/]")


@app.command("show")
@guarded
def show(
    version_id: Annotated[str, typer.Argument(help="ver_…")],
    deployment: DeploymentOption = None,
    env: Annotated[str, typer.Option("--env", help="Whose lifecycle status to show")] = (
        "production"
    ),
    json_output: JsonOption = False,
) -> None:
    """The full version: build state, image, releases per environment, diagnosis."""
    with connect() as client:
        row = full_version(client, version_id=version_id, deployment_id=deployment, environment=env)
    if json_output:
        print_json(row)
    else:
        out.print(version_view(row))


@guarded
def logs(
    version_id: Annotated[str, typer.Argument(help="ver_…")],
    deployment: DeploymentOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the build ends")
    ] = False,
) -> None:
    """Print a version's build log (``--follow``: stream it while the build runs)."""
    with connect() as client:
        deployment_id = resolve_deployment(client, version_id=version_id, given=deployment)
        if not follow:
            sys.stdout.write(client.build_log(deployment_id=deployment_id, version_id=version_id))
            sys.stdout.flush()
            return
        for line in client.follow_build_log(deployment_id=deployment_id, version_id=version_id):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
