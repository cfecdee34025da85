"""The outbox relay: each pass reaps lost jobs, then sends whatever is due to the broker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from shipway.db import session_factory
from shipway.ids import utcnow
from shipway.jobs.dispatch import dispatch, due_for_dispatch
from shipway.jobs.periodic import periodic
from shipway.jobs.reaper import reap_once

log = logging.getLogger(__name__)


@dataclass
class RelayReport:
    """What one relay pass did."""

    dispatched: int = 0
    requeued: int = 0
    failed: int = 0


def relay_once(session_maker: Callable[[], Session] | None = None) -> RelayReport:
    """One pass: reap, then dispatch whatever is due."""
    maker = session_maker or session_factory()
    reaped = reap_once(maker)
    with maker() as session:
        due = due_for_dispatch(session, now=utcnow())
    report = RelayReport(requeued=reaped.requeued, failed=reaped.failed)
    report.dispatched = dispatch(due, session_maker=maker)
    return report


@periodic("relay", interval=lambda settings: settings.relay_interval_seconds, lane="relay", order=0)
def relay_pass() -> None:
    """The periodic relay pass (logs what it did when it did anything)."""
    report = relay_once()
    if report.dispatched or report.requeued or report.failed:
        log.info("relay: %s", report)
