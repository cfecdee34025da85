"""``shipway jobs list|show|cancel|pause|resume|abort|promote-now``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipway.client.api import ShipwayClient
from shipway.client.common import (
    CursorOption,
    ExitCode,
    JsonOption,
    collect_pages,
    connect,
    guarded,
    out,
    print_json,
    progress_console,
    report_end,
)
from shipway.client.follow import watch_job
from shipway.client.render.records import job_view, jobs_table

app = typer.Typer(help="Jobs: publish, promote, rollback, retire.", no_args_is_help=True)

ACTIONS = {
    "cancel": "cancel requested",
    "pause": "canary paused",
    "resume": "canary resumed",
    "abort": "canary abort requested",
    "promote-now": "canary full promotion requested",
}


def job_action(client: ShipwayClient, *, job_id: str, action: str) -> dict[str, Any]:
    """``POST /jobs/{id}/{action}`` (an API without the action: exit 3, said plainly)."""
    return client.job_action(job_id=job_id, action=action)


@app.command("list")
@guarded
def list_(
    state: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="publish, promote, rollback, retire")] = None,
    deployment: Annotated[str | None, typer.Option("--deployment", "-d", help="dep_…")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 50,
    cursor: CursorOption = None,
    json_output: JsonOption = False,
) -> None:
    """Jobs of the token's workspace, newest first (--json: the page, with next_cursor)."""
    with connect() as client:
        page = collect_pages(
            lambda size, after: client.list_jobs(
                state=state, kind=kind, deployment_id=deployment, limit=size, cursor=after
            ),
            limit=limit,
            cursor=cursor,
        )
    if json_output:
        print_json(page)
    elif page["data"]:
        out.print(jobs_table(page["data"]))
    else:
        out.print("no jobs")


@app.command("show")
@guarded
def show(
    job_id: Annotated[str, typer.Argument(help="job_…")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow it live until it ends")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """One job: state, phase, attempts, progress (canary), diagnosis."""
    with connect() as client:
        if follow:
            end = watch_job(client, job_id=job_id, console=progress_console(json_output))
        job = client.get_job(job_id=job_id)
    if json_output:
        print_json(job)
    else:
        out.print(job_view(job))
    if follow:
        console = progress_console(json_output)
        raise typer.Exit(report_end(end, console=console, what=f"{job.get('kind')} job"))


def _action_command(action: str) -> None:
    @guarded
    def command(
        job_id: Annotated[str, typer.Argument(help="job_…")],
        json_output: JsonOption = False,
    ) -> None:
        with connect() as client:
            job = job_action(client, job_id=job_id, action=action)
        if json_output:
            print_json(job)
            return
        out.print(f"{ACTIONS[action]}: [cyan]{job.get('id', job_id)}[/]")
        if isinstance(job, dict) and "state" in job:
            out.print(job_view(job))

    command.__doc__ = {
        "cancel": "Cancel a queued job, or ask a running one to stop and clean up.",
        "pause": "Pause a canary rollout at its current weight.",
        "resume": "Resume a paused canary rollout.",
        "abort": "Abort a canary: traffic back to the stable release, canary FAILED.",
        "promote-now": "Skip the remaining canary steps and promote fully now.",
    }[action]
    app.command(action)(command)


for _action in ACTIONS:
    _action_command(_action)

__all__ = ["ExitCode", "app", "job_action"]
