"""The ``shipway`` command: run the services, administer tokens, and the API client."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Annotated, Any

import typer
from rich.console import Console

from shipway.client.commands import register as register_client_commands
from shipway.client.commands import tokens as client_tokens
from shipway.config import get_settings

app = typer.Typer(help="shipway: build-and-promote control plane.", no_args_is_help=True)
tokens_app = typer.Typer(
    help="API tokens: create (operator, on the database), list, revoke, rotate (through the API).",
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
router_app = typer.Typer(help="The router (HAProxy).", no_args_is_help=True)
secrets_app = typer.Typer(help="The keys that encrypt secrets at rest.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(db_app, name="db")
app.add_typer(router_app, name="router")
app.add_typer(secrets_app, name="secrets")
register_client_commands(app)  # deployments, versions, jobs, publish, promote, queue, …
tokens_app.command("list")(client_tokens.list_)
tokens_app.command("revoke")(client_tokens.revoke)
tokens_app.command("rotate")(client_tokens.rotate)
console = Console(stderr=True)


def _logging() -> None:
    logging.basicConfig(
        level=os.environ.get("SHIPWAY_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (idempotent)."""
    _migrated_database(create=True)
    console.print(f"database at [bold]{_safe_url()}[/] is up to date")


@tokens_app.command("create")
def tokens_create(
    workspace: Annotated[str, typer.Option(help="Workspace name (created if missing)")],
    scope: Annotated[list[str], typer.Option(help="deployments:read, deployments:write, admin")],
    external_workspace_id: Annotated[str | None, typer.Option(help="Your own tenant id")] = None,
    name: Annotated[str, typer.Option(help="A label for the token")] = "",
    expires_in: Annotated[
        str | None,
        typer.Option(help="Refused after this long: 3600, 12h, 30d, 2w (default: never)"),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Create a workspace (if missing) and a token; prints the secret once."""
    from shipway.auth.service import get_or_create_workspace
    from shipway.auth.tokens import create_expiring_token
    from shipway.db import transaction
    from shipway.errors import ShipwayError

    try:
        lifetime = client_tokens.parse_duration(expires_in) if expires_in else None
    except client_tokens.UsageError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    _migrated_database(create=False)
    try:
        with transaction() as session:
            ws = get_or_create_workspace(
                session, name=workspace, external_workspace_id=external_workspace_id
            )
            token, secret = create_expiring_token(
                session,
                workspace_id=ws.id,
                scopes=scope,
                name=name,
                expires_in_seconds=lifetime,
            )
            out: dict[str, Any] = {
                "token": secret,
                "token_id": token.id,
                "workspace_id": ws.id,
                "scopes": token.scopes,
                "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            }
    except ShipwayError as error:
        console.print(f"[red]error:[/] {error.message}")
        raise typer.Exit(2) from None
    if json_output:
        print(json.dumps(out))
    else:
        console.print(f"workspace [bold]{workspace}[/] ({out['workspace_id']})")
        console.print(f"token {out['token_id']} with scopes {', '.join(out['scopes'])}:")
        print(secret)


@app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    from shipway.api import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
    )


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues")] = "builds,rollouts",
    concurrency: Annotated[int, typer.Option()] = 1,
    hostname: Annotated[str | None, typer.Option()] = None,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            help="Send Celery task events, for Flower and `celery events` (one task per "
            "job, named after its kind: shipway.publish, shipway.promote, ...)",
        ),
    ] = False,
    cpus: Annotated[
        str | None,
        typer.Option(
            envvar="SHIPWAY_WORKER_CPUS",
            help="Run this worker and its pool children on these CPUs only (as taskset -c: "
            "1, 1-3, 0,2-3), so that an API on the same host keeps the others while jobs "
            "run flat out (bench/README.md: the busy curve)",
        ),
    ] = None,
) -> None:
    """Run a Celery worker (thin: tasks call shipway's job runner)."""
    from workers.celery_app import celery_app
    from workers.cpus import CpuListError, parse_cpu_list, run_on

    if cpus is not None:
        try:
            run_on(parse_cpu_list(cpus))
        except CpuListError as error:
            raise typer.BadParameter(str(error), param_hint="--cpus") from None
    args = ["worker", "-Q", queues, "-c", str(concurrency), "--loglevel", "INFO", "-P", "prefork"]
    if events:
        args.append("--task-events")
    # The database is the truth: no worker-to-worker sync at start (mingle, a 1 s wait) nor
    # gossip, whose restart after a broker outage logs a spurious error (Celery 5.7).
    args += ["--without-mingle", "--without-gossip"]
    if hostname:
        args += ["-n", hostname]
    celery_app.worker_main(args)


@app.command()
def relay() -> None:
    """Run the outbox relay and lease reaper."""
    from shipway.bootstrap import load_features
    from shipway.jobs.periodic import run_forever
    from workers.celery_app import send_job

    _logging()
    load_features(sender=send_job)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_forever(stop)
    except KeyboardInterrupt:
        stop.set()


@router_app.command("run")
def router_run() -> None:
    """Run HAProxy in the foreground for processes in external router mode."""
    from shipway.router.serve import run_router

    _logging()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stopped = run_router(stop=stop)
    except KeyboardInterrupt:
        stopped = True
    if not stopped:
        raise typer.Exit(1)


@app.command()
def up(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Embedded mode: migrate, then run API, relay and a worker per queue (builds, rollouts).

    A worker that dies is restarted (backoff 1 s to 30 s) and its jobs requeued at once.
    SIGTERM, SIGINT and SIGHUP stop all of it; each worker finishes its running job for at
    most SHIPWAY_UP_STOP_TIMEOUT_SECONDS."""
    from shipway.embedded import run_up
    from shipway.embedded.instance import AlreadyRunning
    from shipway.migrate import upgrade

    _logging()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade()
    host, port = host or settings.api_host, port or settings.api_port

    def started(worker_pids: list[int]) -> None:
        console.print(
            f"shipway up: API on http://{host}:{port}, database {_safe_url()}, "
            f"broker {settings.resolved_broker_url}, "
            f"worker pids {' '.join(map(str, worker_pids))} (builds, rollouts)"
        )

    try:
        run_up(settings=settings, host=host, port=port, on_start=started)
    except AlreadyRunning as error:
        console.print(f"shipway up: {error.message}")
        raise typer.Exit(1) from None


@secrets_app.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new key for SHIPWAY_SECRETS_KEYS (put it first, then run `secrets rotate`)."""
    from shipway.crypto import generate_key

    print(generate_key())


@secrets_app.command("rotate")
def secrets_rotate(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Re-encrypt every stored secret (config secrets, TLS keys) with the first key of
    SHIPWAY_SECRETS_KEYS, in one transaction; afterwards the other keys can be dropped."""
    import shipway.models  # noqa: F401  (every table, so every encrypted column)
    from shipway.crypto import rotate
    from shipway.db import get_engine
    from shipway.errors import ShipwayError

    try:
        with get_engine().begin() as connection:
            counts = rotate(connection)
    except ShipwayError as error:
        console.print(f"[red]{error.message}[/]")
        raise typer.Exit(1) from None
    if json_output:
        print(json.dumps(counts))
        return
    for column, count in counts.items():
        console.print(f"{column}: {count} value(s) re-encrypted with the first key")


def _migrated_database(*, create: bool) -> None:
    """Bring the configured database up to date, or exit with one clear line: a database
    that cannot be reached, or (unless ``create``) an embedded one that does not exist yet
    (a token written into a new ./.shipway database is one no running API reads)."""
    from sqlalchemy.exc import OperationalError

    from shipway.migrate import upgrade

    settings = get_settings()
    embedded = settings.data_dir / "shipway.db"
    if not create and not settings.database_url and not embedded.exists():
        console.print(
            f"[red]error:[/] no shipway database at {embedded.resolve()}. Set "
            "SHIPWAY_DATABASE_URL to the API's database (and SHIPWAY_DATA_DIR to its data "
            "folder in the embedded mode), or start it first: shipway up / shipway db upgrade"
        )
        raise typer.Exit(2)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade()
    except OperationalError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        console.print(f"[red]error:[/] cannot reach the database at {_safe_url()}: {reason}")
        console.print("[dim]check SHIPWAY_DATABASE_URL and that the database server runs[/]")
        raise typer.Exit(1) from None


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    return make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)


if __name__ == "__main__":
    app()
