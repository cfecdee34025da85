"""Wires the features into the job engine: the one module that imports them all for it.

Importing a feature module registers its job kinds (``@handler``) and periodic tasks
(``@periodic``); ``load_features`` also hands the engine the broker sender. Every
entry point (the API app, the Celery worker, the relay, ``shipway up``) calls it
before it enqueues, runs or dispatches a job.
"""

from __future__ import annotations

import shipway.builds.publish
import shipway.domains.renewal
import shipway.domains.routing
import shipway.jobs.relay
import shipway.releases.autopromote
import shipway.releases.compensation
import shipway.releases.monitor
import shipway.releases.phases
import shipway.releases.reconcile
import shipway.releases.retention
import shipway.releases.retire
import shipway.webhooks.delivery  # noqa: F401  (the imports above and this one register)
from shipway.jobs.dispatch import Sender, use_sender


def load_features(*, sender: Sender) -> None:
    """Make every job kind and periodic task known, and send jobs through ``sender``."""
    use_sender(sender)
