"""``shipway webhooks …``: signed webhook endpoints of the workspace (admin token)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from shipway.client.commands.tokens import parse_duration
from shipway.client.common import JsonOption, connect, guarded, out, print_json

app = typer.Typer(
    help="Signed webhooks (Standard Webhooks): endpoints, secrets, deliveries, redelivery.",
    no_args_is_help=True,
)
WebhookArg = Annotated[str, typer.Argument(help="whk_…")]
EventOption = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        "-e",
        help="An event type (repeat): version.ready, version.failed, release.active, "
        "release.failed, release.unhealthy, release.rolled_back, canary.step, canary.aborted, "
        "canary.promoted, job.stuck",
    ),
]
ROOT = "/api/v1/webhooks"


def webhooks_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "URL", "EVENTS", "ENABLED", "CREATED"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            row["url"],
            ",".join(row["event_types"]),
            "yes" if row["enabled"] else "no",
            row["created_at"],
        )
    return table


def deliveries_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "EVENT", "STATE", "ATTEMPTS", "CODES", "LAST ERROR", "CREATED"):
        table.add_column(column)
    for row in rows:
        codes = [str(a["status_code"] or "-") for a in row["attempt_log"]]
        table.add_row(
            row["id"],
            row["event_type"],
            row["state"],
            str(len(row["attempt_log"])),
            " ".join(codes[-6:]) or "-",
            (row["last_error"] or "")[:60],
            row["created_at"],
        )
    return table


def _show(row: dict[str, Any], json_output: bool, what: str) -> None:
    if json_output:
        print_json(row)
        return
    out.print(f"webhook [bold]{row['id']}[/] {what}: {row['url']} ({','.join(row['event_types'])})")
    if "secret" in row:
        out.print("signing secret (shown only now):")
        print(row["secret"])


def _queued(path: str, json_output: bool, what: str) -> None:
    with connect() as client:
        row = client.request("POST", path)
    if json_output:
        print_json(row)
    else:
        out.print(f"queued [bold]{row['id']}[/] {what}")


@app.command("list")
@guarded
def list_(json_output: JsonOption = False) -> None:
    """List the workspace's webhook endpoints."""
    with connect() as client:
        answer = client.request("GET", ROOT)
    if json_output:
        print_json(answer)  # the API's shape, {"data": [...]}
    else:
        out.print(webhooks_table(list(answer["data"])))


@app.command("create")
@guarded
def create(
    url: Annotated[str, typer.Argument(help="https://… receiving the POSTs")],
    event: EventOption = None,
    description: Annotated[str, typer.Option(help="A label")] = "",
    json_output: JsonOption = False,
) -> None:
    """Add an endpoint; prints its signing secret (whsec_…) once."""
    body = {"url": url, "event_types": event or [], "description": description}
    with connect() as client:
        row = client.request("POST", ROOT, json_body=body)
    _show(row, json_output, "created")


@app.command("update")
@guarded
def update(
    webhook_id: WebhookArg,
    url: Annotated[str | None, typer.Option(help="New URL")] = None,
    event: EventOption = None,
    enable: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
    json_output: JsonOption = False,
) -> None:
    """Change an endpoint's URL, event types (all given replace the old) or enabled."""
    body: dict[str, Any] = {"url": url, "event_types": event or None, "enabled": enable}
    with connect() as client:
        row = client.request(
            "PATCH",
            f"{ROOT}/{webhook_id}",
            json_body={k: v for k, v in body.items() if v is not None},
        )
    _show(row, json_output, "updated")


@app.command("delete")
@guarded
def delete(webhook_id: WebhookArg, json_output: JsonOption = False) -> None:
    """Remove an endpoint with its delivery log."""
    with connect() as client:
        row = client.request("DELETE", f"{ROOT}/{webhook_id}")
    _show(row, json_output, "deleted")


@app.command("rotate")
@guarded
def rotate(
    webhook_id: WebhookArg,
    overlap: Annotated[
        str, typer.Option(help="How long the old secret still signs too: 0, 1h, 1d (max 7d)")
    ] = "1d",
    json_output: JsonOption = False,
) -> None:
    """Replace the signing secret; prints the new one once."""
    body = {"overlap_seconds": parse_duration(overlap)}
    with connect() as client:
        row = client.request("POST", f"{ROOT}/{webhook_id}/rotate", json_body=body)
    _show(row, json_output, "has a new secret")


@app.command("test")
@guarded
def test(webhook_id: WebhookArg, json_output: JsonOption = False) -> None:
    """Queue a webhook.test delivery to the endpoint."""
    _queued(f"{ROOT}/{webhook_id}/test", json_output, "(webhook.test)")


@app.command("deliveries")
@guarded
def deliveries(
    webhook_id: WebhookArg,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    json_output: JsonOption = False,
) -> None:
    """The endpoint's latest deliveries with each attempt's status code."""
    with connect() as client:
        page = client.request("GET", f"{ROOT}/{webhook_id}/deliveries", params={"limit": limit})
    if json_output:
        print_json(page)
    else:
        out.print(deliveries_table(list(page["data"])))


@app.command("redeliver")
@guarded
def redeliver(
    webhook_id: WebhookArg,
    delivery_id: Annotated[str, typer.Argument(help="msg_… (same webhook-id is sent)")],
    json_output: JsonOption = False,
) -> None:
    """Send a delivery again now (a new round of attempts)."""
    _queued(f"{ROOT}/{webhook_id}/deliveries/{delivery_id}/redeliver", json_output, "again")
