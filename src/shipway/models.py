"""Every table, imported once so metadata (and Alembic) sees them all."""

from shipway.auth.models import ApiToken
from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.config_vars.models import ConfigVersion
from shipway.db import Base
from shipway.domains.models import AcmeAccount, Certificate, Domain
from shipway.events.models import Event
from shipway.idempotency.models import IdempotencyRecord
from shipway.jobs.models import Job
from shipway.webhooks.models import WebhookAttempt, WebhookCursor, WebhookDelivery, WebhookEndpoint
from shipway.workers_registry.models import Worker
from shipway.workspaces.models import Project, Workspace

__all__ = [
    "AcmeAccount",
    "ApiToken",
    "Base",
    "Certificate",
    "ConfigVersion",
    "Deployment",
    "Domain",
    "Environment",
    "Event",
    "IdempotencyRecord",
    "Job",
    "Project",
    "Release",
    "Version",
    "WebhookAttempt",
    "WebhookCursor",
    "WebhookDelivery",
    "WebhookEndpoint",
    "Worker",
    "Workspace",
]
