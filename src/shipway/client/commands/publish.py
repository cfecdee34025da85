"""``shipway publish PATH``: pack a folder, upload it, follow the build (and promotion)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shipway.client.api import ShipwayClient
from shipway.client.common import (
    ExitCode,
    IdempotencyOption,
    JsonOption,
    UsageError,
    connect,
    guarded,
    new_idempotency_key,
    print_json,
    progress_console,
    report_end,
)
from shipway.client.follow import watch_job
from shipway.client.library import git_metadata
from shipway.client.pack import pack_folder
from shipway.client.render.diagnosis import diagnosis


def publish_folder(
    client: ShipwayClient,
    *,
    folder: Path,
    deployment_id: str,
    idempotency_key: str,
    form: dict[str, str],
) -> tuple[dict[str, Any], int, int]:
    """Pack and upload ``folder``; the 202 answer ``{"version", "job"}``, files and bytes."""
    try:
        packed = pack_folder(folder)
    except OSError as error:
        raise UsageError(f"cannot pack {folder}: {error}") from None
    try:
        accepted = client.publish(
            deployment_id=deployment_id,
            archive=packed.file,
            form=form,
            idempotency_key=idempotency_key,
        )
    finally:
        packed.file.close()
    return accepted, packed.files, packed.size


@guarded
def publish(
    path: Annotated[Path, typer.Argument(help="Folder to publish (static files or a Dockerfile)")],
    deployment: Annotated[str, typer.Option("--deployment", "-d", help="dep_… to publish to")],
    promote_to: Annotated[
        str | None, typer.Option(help="Promote to this environment once the build is ready")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Runtime port of this version")] = None,
    command: Annotated[str | None, typer.Option(help="Runtime command of this version")] = None,
    health_path: Annotated[str | None, typer.Option(help="Health check path")] = None,
    git: Annotated[
        bool, typer.Option("--git/--no-git", help="Send the folder's git branch/commit/author")
    ] = True,
    git_branch: Annotated[
        str | None,
        typer.Option(
            envvar="SHIPWAY_GIT_BRANCH",
            help="Branch to record (CI checks out a detached HEAD: pass the CI's branch name)",
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Follow the build until it ends")
    ] = True,
    show_log: Annotated[bool, typer.Option("--log/--no-log", help="Print the build log")] = True,
    idempotency_key: IdempotencyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Pack PATH as tar.gz, upload it as a new version, and follow its build.

    Exits 0 once the version is ready (and promoted, with --promote-to), 1 with the
    diagnosis if the build (or the promotion) failed.
    """
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    console = progress_console(json_output)
    form = git_metadata(path.resolve()) if git else {}
    extra = {
        "promote_to": promote_to,
        "runtime_port": str(port) if port else None,
        "runtime_command": command,
        "health_check_path": health_path,
        "git_branch": git_branch,
    }
    form.update({k: v for k, v in extra.items() if v is not None})
    key = new_idempotency_key(idempotency_key)
    with connect() as client:
        accepted, files, size = publish_folder(
            client, folder=path, deployment_id=deployment, idempotency_key=key, form=form
        )
        version, job = accepted["version"], accepted["job"]
        console.print(
            f"uploaded {files} file{'' if files == 1 else 's'} ({size / 1024:.1f} KiB): version "
            f"[bold]v{version['version_number']}[/] [cyan]{version['id']}[/], "
            f"build job [cyan]{job['id']}[/]"
        )
        if not follow:
            if json_output:
                print_json(accepted)
            return
        end = watch_job(client, job_id=job["id"], console=console, show_log=show_log)
        final = client.get_deployment_version(deployment_id=deployment, version_id=version["id"])
        code = report_end(end, console=console, what=f"build of v{version['version_number']}")
        result: dict[str, Any] = {"version": final, "job": client.get_job(job_id=job["id"])}
        promote_job_id = (end.get("result") or {}).get("promote_job_id")
        if code == ExitCode.OK and promote_job_id:
            console.print(f"promoting to [bold]{promote_to}[/]: job [cyan]{promote_job_id}[/]")
            promoted = watch_job(client, job_id=promote_job_id, console=console)
            code = report_end(promoted, console=console, what=f"promotion to {promote_to}")
            result["promote_job"] = client.get_job(job_id=promote_job_id)
            result["version"] = client.get_deployment_version(
                deployment_id=deployment, version_id=version["id"], environment=promote_to
            )
    if code == ExitCode.OK and not end.get("failure_reason"):
        console.print(f"version [cyan]{version['id']}[/] is [green]{final['state']}[/]")
    elif not end.get("failure_diagnostics") and final.get("build_failure_diagnostics"):
        console.print(
            diagnosis(final.get("build_failure_reason"), final["build_failure_diagnostics"])
        )
    if json_output:
        print_json(result)
    raise typer.Exit(code)
