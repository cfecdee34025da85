"""``shipway promote VERSION --env …`` and ``shipway rollback``: start a rollout and follow it."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

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
    resolve_deployment,
)
from shipway.client.follow import watch_job
from shipway.client.library import canary_strategy
from shipway.client.render.cells import styled

EnvOption = Annotated[str, typer.Option("--env", "-e", help="Environment")]
FollowOption = Annotated[
    bool, typer.Option("--follow/--no-follow", help="Follow the rollout until it ends")
]


def parse_canary(
    steps: str,
    *,
    analysis_interval: float | None = None,
    max_error_rate: float | None = None,
    min_requests: int | None = None,
) -> dict[str, Any]:
    """``10:30,50:60`` (weight:pause_seconds, pause optional) as a canary strategy."""
    parsed: list[tuple[int, float | None]] = []
    for part in steps.split(","):
        weight, _, pause = part.strip().partition(":")
        try:
            parsed.append((int(weight), float(pause) if pause.strip() else None))
        except ValueError:
            raise UsageError(
                f"--canary step {part.strip()!r} is not WEIGHT[:PAUSE_SECONDS], e.g. 10:30,50:60"
            ) from None
        if not 1 <= parsed[-1][0] <= 100:
            raise UsageError(f"--canary weight {parsed[-1][0]} is not between 1 and 100")
    return canary_strategy(
        parsed,
        analysis_interval=analysis_interval,
        max_error_rate=max_error_rate,
        min_requests=min_requests,
    )


def follow_rollout(
    client: ShipwayClient,
    *,
    accepted: dict[str, Any],
    deployment_id: str,
    environment: str,
    console: Console,
    what: str,
) -> tuple[ExitCode, dict[str, Any]]:
    """Follow a promote/rollback job to its end; the exit code and the final records."""
    job_id = accepted["job"]["id"]
    end = watch_job(client, job_id=job_id, console=console)
    code = report_end(end, console=console, what=what)
    release_id = accepted["release"]["id"]
    version_id = accepted["release"]["version_id"]
    version = client.get_deployment_version(
        deployment_id=deployment_id, version_id=version_id, environment=environment
    )
    release = next((r for r in version.get("releases") or [] if r["id"] == release_id), None)
    if release is not None:
        status = styled(release.get("status"))
        console.print(f"release [cyan]{release_id}[/] ({environment}) is ", status, sep="")
        if code == ExitCode.OK and release.get("status") not in ("ACTIVE", None):
            code = ExitCode.FAILED
    return code, {"release": release, "job": client.get_job(job_id=job_id), "version": version}


def _announce(console: Console, accepted: dict[str, Any], label: str) -> None:
    job = accepted["job"]
    position = job.get("queue_position")
    waiting = f", queue position {position}" if position and position > 1 else ""
    console.print(
        f"{label}: release [cyan]{accepted['release']['id']}[/], job [cyan]{job['id']}[/]{waiting}"
    )


@guarded
def promote(
    version_id: Annotated[str, typer.Argument(help="ver_… to promote")],
    env: EnvOption = "production",
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="dep_… (default: looked up)")
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(help="Canary steps WEIGHT:PAUSE_SECONDS,… e.g. 10:30,50:60"),
    ] = None,
    analysis_interval: Annotated[
        float | None, typer.Option(help="Canary analysis interval, seconds")
    ] = None,
    max_error_rate: Annotated[
        float | None, typer.Option(help="Canary fails above this 5xx rate (0-1)")
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option(help="Fewer canary requests per interval: inconclusive")
    ] = None,
    supersede: Annotated[
        bool, typer.Option(help="Cancel rollouts still queued for this environment")
    ] = False,
    follow: FollowOption = True,
    idempotency_key: IdempotencyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Promote a ready (or archived: rollback) version in an environment and follow it.

    Shows each phase, healthy replicas and, with --canary, every step's weight and
    analysis live. Exits 0 once the release is ACTIVE, 1 with the diagnosis otherwise.
    """
    analysis_given = any(v is not None for v in (analysis_interval, max_error_rate, min_requests))
    if analysis_given and not canary:
        raise UsageError("--analysis-interval/--max-error-rate/--min-requests need --canary")
    strategy = (
        parse_canary(
            canary,
            analysis_interval=analysis_interval,
            max_error_rate=max_error_rate,
            min_requests=min_requests,
        )
        if canary
        else None
    )
    console = progress_console(json_output)
    key = new_idempotency_key(idempotency_key)
    with connect() as client:
        deployment_id = resolve_deployment(client, version_id=version_id, given=deployment)
        accepted = client.promote(
            deployment_id=deployment_id,
            version_id=version_id,
            environment=env,
            strategy=strategy,
            supersede=supersede,
            idempotency_key=key,
        )
        _announce(console, accepted, f"promoting {version_id} to [bold]{env}[/]")
        _follow_or_print(
            client,
            accepted=accepted,
            deployment_id=deployment_id,
            environment=env,
            console=console,
            what=f"{accepted['job'].get('kind', 'promote')} to {env}",
            follow=follow,
            json_output=json_output,
        )


@guarded
def rollback(
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="dep_… (default: from --to)")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="ver_… to go back to (default: the latest retained archive)"),
    ] = None,
    env: EnvOption = "production",
    follow: FollowOption = True,
    idempotency_key: IdempotencyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Roll an environment back to a retained version's exact image (no rebuild) and follow it."""
    if not deployment and not to:
        raise UsageError("give --deployment, or --to VERSION (its deployment is looked up)")
    console = progress_console(json_output)
    key = new_idempotency_key(idempotency_key)
    with connect() as client:
        deployment_id = deployment or resolve_deployment(client, version_id=str(to), given=None)
        accepted = client.rollback(
            deployment_id=deployment_id, environment=env, to_version_id=to, idempotency_key=key
        )
        target = accepted["release"]["version_id"]
        _announce(console, accepted, f"rolling [bold]{env}[/] back to {target}")
        _follow_or_print(
            client,
            accepted=accepted,
            deployment_id=deployment_id,
            environment=env,
            console=console,
            what=f"rollback of {env}",
            follow=follow,
            json_output=json_output,
        )


def _follow_or_print(
    client: ShipwayClient,
    *,
    accepted: dict[str, Any],
    deployment_id: str,
    environment: str,
    console: Console,
    what: str,
    follow: bool,
    json_output: bool,
) -> None:
    """The accepted rollout as JSON when not following; else follow it and exit with its code."""
    if not follow:
        if json_output:
            print_json(accepted)
        return
    code, result = follow_rollout(
        client,
        accepted=accepted,
        deployment_id=deployment_id,
        environment=environment,
        console=console,
        what=what,
    )
    if json_output:
        print_json(result)
    raise typer.Exit(code)
