"""``shipway domains list|add|remove``: the hostnames of an environment."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from shipway.client.api import ShipwayClient
from shipway.client.common import JsonOption, connect, guarded, out, print_json

app = typer.Typer(
    help="Hostnames of environments: generated and custom domains.", no_args_is_help=True
)
DeploymentArg = Annotated[str, typer.Argument(help="dep_…")]
EnvOption = Annotated[str, typer.Option("--env", help="Environment")]


def domains_path(deployment_id: str, environment: str) -> str:
    return f"/api/v1/deployments/{deployment_id}/environments/{environment}/domains"


def list_domains(client: ShipwayClient, *, deployment_id: str, environment: str) -> list[Any]:
    """Every hostname of the environment, the generated one first."""
    answer = client.request("GET", domains_path(deployment_id, environment))
    return list(answer["data"])


def domains_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("HOSTNAME", "KIND", "ADDED BY", "ADDED AT"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["hostname"], row["kind"], row["created_by"], row["created_at"])
    return table


@app.command("list")
@guarded
def list_(
    deployment_id: DeploymentArg, env: EnvOption = "production", json_output: JsonOption = False
) -> None:
    """List the environment's hostnames."""
    with connect() as client:
        rows = list_domains(client, deployment_id=deployment_id, environment=env)
    if json_output:
        print_json(rows)
    else:
        out.print(domains_table(rows))


@app.command("add")
@guarded
def add(
    deployment_id: DeploymentArg,
    hostname: Annotated[str, typer.Argument(help="e.g. www.example.com (DNS → the router)")],
    env: EnvOption = "production",
    json_output: JsonOption = False,
) -> None:
    """Route a custom domain to the environment."""
    with connect() as client:
        row = client.request(
            "POST", domains_path(deployment_id, env), json_body={"hostname": hostname}
        )
    if json_output:
        print_json(row)
    else:
        out.print(f"added [bold]{row['hostname']}[/] to {env} of [cyan]{deployment_id}[/]")


@app.command("remove")
@guarded
def remove(
    deployment_id: DeploymentArg,
    hostname: Annotated[str, typer.Argument(help="A custom domain of the environment")],
    env: EnvOption = "production",
    json_output: JsonOption = False,
) -> None:
    """Stop routing a custom domain to the environment."""
    with connect() as client:
        row = client.request("DELETE", f"{domains_path(deployment_id, env)}/{hostname}")
    if json_output:
        print_json(row)
    else:
        out.print(f"removed [bold]{row['hostname']}[/] from {env} of [cyan]{deployment_id}[/]")
