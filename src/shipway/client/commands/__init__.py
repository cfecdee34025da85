"""The client's commands, one module per group; ``register`` adds them to ``shipway``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client commands (deployments, versions, jobs, publish, promote, …) to ``app``."""
    from shipway.client.commands import (
        config,
        deployments,
        domains,
        jobs,
        login,
        promote,
        publish,
        queue,
        versions,
        webhooks,
    )

    app.add_typer(deployments.app, name="deployments")
    app.add_typer(versions.app, name="versions")
    app.add_typer(domains.app, name="domains")
    app.add_typer(config.app, name="config")
    app.add_typer(jobs.app, name="jobs")
    app.add_typer(webhooks.app, name="webhooks")
    app.command("publish")(publish.publish)
    app.command("promote")(promote.promote)
    app.command("rollback")(promote.rollback)
    app.command("logs")(versions.logs)
    app.command("queue")(queue.queue)
    app.command("login")(login.login)
