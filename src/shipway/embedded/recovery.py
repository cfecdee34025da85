"""Jobs of workers known to be gone are taken back at once, not after their lease expires.

``shipway up`` names each worker's Celery node after its instance (``rollouts-<instance>@host``);
each pool child registers under that node. When ``up`` sees a worker exit, when it stops
one, and at start for the workers of the instance before it (found in ``up.json`` of the
data directory), every running job leased by those nodes' processes is requeued at once
(or failed with ``worker_lost`` when out of attempts), and their registry rows stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shipway.db import session_factory
from shipway.jobs.reaper import ReapReport, reap_jobs_of_dead_workers
from shipway.workers_registry import service as registry

log = logging.getLogger(__name__)


def take_back_jobs_of(nodes: Sequence[str]) -> ReapReport:
    """Requeue (or fail) the running jobs of these exited nodes; mark their processes stopped."""
    maker = session_factory()
    with maker() as session:
        workers = registry.workers_of_nodes(session, nodes=nodes)
    report = reap_jobs_of_dead_workers(
        maker, is_dead=lambda owner: registry.worker_for_owner(workers, owner) is not None
    )
    with maker() as session, session.begin():
        registry.mark_nodes_stopped(session, nodes=nodes)
    if report.requeued or report.failed:
        log.warning(
            "took back the jobs of exited worker(s) %s: %d requeued, %d failed (worker_lost)",
            ", ".join(nodes),
            report.requeued,
            report.failed,
        )
    return report
