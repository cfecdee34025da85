"""The shipway API client: the ``shipway`` command line and a typed Python library.

As a library (docs/python-client.md)::

    from shipway.client import ShipwayClient, publish, promote, wait_for_job

    with ShipwayClient(base_url="https://shipway.internal", token="shw_…") as client:
        accepted = publish(client, deployment_id="dep_…", source="./site")
        wait_for_job(client, job_id=accepted["job"]["id"], check=True)

``api`` is the HTTP client (one method per endpoint), ``library`` the helpers above,
``follow`` watches jobs live, ``config`` finds the API URL and token, ``render`` draws
tables, and ``commands/`` holds one thin Typer module per command group.
"""

from shipway.client.api import ClientError, ShipwayClient
from shipway.client.follow import Update, follow_job
from shipway.client.library import (
    JobEnd,
    JobFailed,
    canary_strategy,
    git_metadata,
    new_idempotency_key,
    promote,
    publish,
    rollback,
    wait_for_job,
)

__all__ = [
    "ClientError",
    "JobEnd",
    "JobFailed",
    "ShipwayClient",
    "Update",
    "canary_strategy",
    "follow_job",
    "git_metadata",
    "new_idempotency_key",
    "promote",
    "publish",
    "rollback",
    "wait_for_job",
]
