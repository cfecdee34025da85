"""A Prometheus collector that reads the database on each scrape.

Fleet-wide (every workspace). Gauges are read fresh on each scrape with the indexed
queries of :mod:`shipway.queue.queries` (queued and running rows, releases by status,
living workers). Counters and histograms over finished jobs would need every finished
job on each scrape; instead the collector keeps totals of jobs that finished before a
watermark (``SETTLE`` ago: a finished job never changes again) and on each scrape adds
only the jobs that finished since, through the ``(state, finished_at)`` index. The
first scrape of a process reads all finished jobs once (aggregated in the database).
A process restart resets the counters, which Prometheus' ``rate()`` handles; with
several API replicas, scrape one of them (they all report the same database).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, case, extract, func, literal, or_, select
from sqlalchemy.orm import Session

from shipway.catalog.machines import RELEASE
from shipway.catalog.models import Release
from shipway.db import engine_for, session_factory
from shipway.events.models import Event
from shipway.ids import utcnow
from shipway.jobs import handlers
from shipway.jobs.machine import TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from shipway.metrics.certificates import certificate_metrics, read_certificates
from shipway.queue import queries as queue
from shipway.workers_registry import service as registry

SETTLE = timedelta(minutes=2)
"""Jobs that finished longer ago than this are added to the kept totals once."""
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
STUCK_REASONS = ("lease_expired", "deadline_passed", "queued_too_long")
CANARY_ABORT_REASON = "canary_analysis_failed"


@dataclass
class Histogram:
    """Cumulative bucket counts (``le`` each of DURATION_BUCKETS), count and sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    count: int = 0
    total: float = 0.0

    def add(self, other: Histogram) -> None:
        """Add another histogram's observations."""
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.count += other.count
        self.total += other.total

    def exposition(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs, ending with +Inf."""
        pairs = [(_le(b), float(n)) for b, n in zip(DURATION_BUCKETS, self.buckets, strict=True)]
        return [*pairs, ("+Inf", float(self.count))]


def _le(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else str(bound)


@dataclass
class FinishedTotals:
    """Aggregates of finished jobs."""

    jobs: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    build_failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    phases: dict[tuple[str, str], Histogram] = field(default_factory=lambda: defaultdict(Histogram))

    def add(self, other: FinishedTotals) -> None:
        """Add another set of totals to these."""
        for key, n in other.jobs.items():
            self.jobs[key] += n
        for reason, n in other.build_failures.items():
            self.build_failures[reason] += n
        for kind, histogram in other.durations.items():
            self.durations[kind].add(histogram)
        for key, histogram in other.phases.items():
            self.phases[key].add(histogram)

    def plus(self, other: FinishedTotals) -> FinishedTotals:
        """A new FinishedTotals: these and ``other``."""
        both = FinishedTotals()
        both.add(self)
        both.add(other)
        return both


def _seconds_between(start: Any, end: Any, dialect: str) -> Any:
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)


def _histogram_columns(seconds: Any) -> list[Any]:
    return [
        func.count().label("n"),
        func.coalesce(func.sum(seconds), 0.0).label("total"),
        *(
            func.sum(case((seconds <= literal(bound), 1), else_=0)).label(f"b{i}")
            for i, bound in enumerate(DURATION_BUCKETS)
        ),
    ]


def _histogram(row: Any) -> Histogram:
    return Histogram(
        buckets=[int(getattr(row, f"b{i}") or 0) for i in range(len(DURATION_BUCKETS))],
        count=int(row.n),
        total=float(row.total or 0.0),
    )


def finished_totals(
    session: Session, *, after: datetime | None, until: datetime | None
) -> FinishedTotals:
    """Counts and duration histograms of jobs that finished in ``(after, until]``.

    Three aggregate queries on the ``(state, finished_at)`` index: jobs by kind, state
    and failure reason; job durations (first start to finish) by kind; phase durations
    by kind and phase, from each ``job_phase`` event to the job's next phase or state
    change (a phase cut short by a lost worker lasts until the reaper noticed).
    """
    dialect = session.get_bind().dialect.name
    window: list[Any] = [Job.state.in_(sorted(TERMINAL_JOB_STATES))]
    if after is not None:
        window.append(Job.finished_at > after)
    if until is not None:
        window.append(Job.finished_at <= until)
    totals = FinishedTotals()
    for row in session.execute(
        select(Job.kind, Job.state, Job.failure_reason, func.count().label("n"))
        .where(*window)
        .group_by(Job.kind, Job.state, Job.failure_reason)
    ):
        totals.jobs[(row.kind, row.state)] += int(row.n)
        if row.kind == "publish" and row.state == "failed":
            totals.build_failures[row.failure_reason or "unknown"] += int(row.n)

    seconds = _seconds_between(Job.started_at, Job.finished_at, dialect)
    for row in session.execute(
        select(Job.kind, *_histogram_columns(seconds))
        .where(*window, Job.started_at.isnot(None))
        .group_by(Job.kind)
    ):
        totals.durations[row.kind] = _histogram(row)

    steps = (
        select(
            Job.kind,
            Event.subject_type,
            Event.to_state,
            Event.created_at.label("began"),
            func.lead(Event.created_at)
            .over(partition_by=Event.job_id, order_by=Event.id)
            .label("ended"),
        )
        .join(Job, Job.id == Event.job_id)
        .where(
            *window,
            or_(
                Event.subject_type == "job_phase",
                and_(
                    Event.subject_type == "job",
                    or_(Event.from_state.is_(None), Event.from_state != Event.to_state),
                ),
            ),
        )
        .subquery()
    )
    seconds = _seconds_between(steps.c.began, steps.c.ended, dialect)
    for row in session.execute(
        select(steps.c.kind, steps.c.to_state, *_histogram_columns(seconds))
        .where(steps.c.subject_type == "job_phase", steps.c.ended.isnot(None))
        .group_by(steps.c.kind, steps.c.to_state)
    ):
        totals.phases[(row.kind, row.to_state)] = _histogram(row)
    return totals


@dataclass(frozen=True)
class Snapshot:
    """Gauges read fresh on each scrape."""

    current_jobs: dict[tuple[str, str], int]
    queues: list[Any]
    workers_alive: int
    stuck: dict[str, int]
    releases: dict[str, int]
    rollbacks: int
    canary_aborts: int


def read_snapshot(session: Session, *, now: datetime) -> Snapshot:
    """Queue depth and age, queued/running jobs, workers, stuck jobs, releases."""
    current = {
        (row.kind, row.state): int(row.n)
        for row in session.execute(
            select(Job.kind, Job.state, func.count().label("n"))
            .where(Job.state.in_(("queued", "running")))
            .group_by(Job.kind, Job.state)
        )
    }
    running = queue.running_jobs(session)
    stuck: dict[str, int] = dict.fromkeys(STUCK_REASONS, 0)
    for _job, reason, _since in queue.stuck_jobs(session, now=now, running=running, limit=None):
        stuck[reason] += 1
    releases: dict[str, int] = {}
    rollbacks = canary_aborts = 0
    for row in session.execute(
        select(
            Release.status,
            func.count().label("n"),
            func.sum(case((Release.last_rollback_at.isnot(None), 1), else_=0)).label("rollbacks"),
            func.sum(case((Release.failure_reason == CANARY_ABORT_REASON, 1), else_=0)).label(
                "canary_aborts"
            ),
        ).group_by(Release.status)
    ):
        releases[row.status] = int(row.n)
        rollbacks += int(row.rollbacks or 0)
        canary_aborts += int(row.canary_aborts or 0)
    return Snapshot(
        current_jobs=current,
        queues=queue.queue_stats(session, now=now),
        workers_alive=registry.count_alive(session, now=now),
        stuck=stuck,
        releases=releases,
        rollbacks=rollbacks,
        canary_aborts=canary_aborts,
    )


class ShipwayCollector(Collector):
    """Collects shipway's metrics from one database on each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.maker = session_factory(engine)
        self.settled = FinishedTotals()
        self.watermark: datetime | None = None
        self.lock = threading.Lock()

    def _finished(self, session: Session, *, now: datetime) -> FinishedTotals:
        """Kept totals, advanced to ``now - SETTLE``, plus what finished since."""
        settle_until = now - SETTLE
        if self.watermark is None or settle_until > self.watermark:
            self.settled.add(finished_totals(session, after=self.watermark, until=settle_until))
            self.watermark = settle_until
        return self.settled.plus(finished_totals(session, after=self.watermark, until=None))

    def collect(self) -> Iterator[Metric]:
        """Read the database and yield every metric family."""
        now = utcnow()
        with self.lock, self.maker() as session, session.begin():
            finished = self._finished(session, now=now)
            snapshot = read_snapshot(session, now=now)
            certificates = read_certificates(session)
        yield from _job_metrics(finished, snapshot)
        yield from _queue_metrics(snapshot)
        yield from _release_metrics(snapshot)
        yield from certificate_metrics(certificates)


def _job_metrics(finished: FinishedTotals, snapshot: Snapshot) -> Iterable[Metric]:
    jobs = CounterMetricFamily(
        "shipway_jobs",
        "Jobs that ended, by kind and terminal state (succeeded, failed, cancelled).",
        labels=["kind", "state"],
    )
    kinds = sorted(set(handlers.kinds()) | {kind for kind, _ in finished.jobs})
    for kind in kinds:
        for state in sorted(TERMINAL_JOB_STATES):
            jobs.add_metric([kind, state], finished.jobs.get((kind, state), 0))
    yield jobs
    current = GaugeMetricFamily(
        "shipway_jobs_current",
        "Jobs queued or running now, by kind and state.",
        labels=["kind", "state"],
    )
    for kind in sorted(set(kinds) | {kind for kind, _ in snapshot.current_jobs}):
        for state in ("queued", "running"):
            current.add_metric([kind, state], snapshot.current_jobs.get((kind, state), 0))
    yield current
    durations = HistogramMetricFamily(
        "shipway_job_duration_seconds",
        "Time from a job's first start to its end, by kind.",
        labels=["kind"],
    )
    for kind, histogram in sorted(finished.durations.items()):
        durations.add_metric([kind], histogram.exposition(), sum_value=histogram.total)
    yield durations
    phases = HistogramMetricFamily(
        "shipway_job_phase_duration_seconds",
        "Time jobs spent in each phase, by kind and phase (jobs that ended).",
        labels=["kind", "phase"],
    )
    for (kind, phase), histogram in sorted(finished.phases.items()):
        phases.add_metric([kind, phase], histogram.exposition(), sum_value=histogram.total)
    yield phases
    failures = CounterMetricFamily(
        "shipway_build_failures",
        "Publish jobs that failed, by failure_reason.",
        labels=["reason"],
    )
    for reason, n in sorted(finished.build_failures.items()):
        failures.add_metric([reason], n)
    yield failures


def _queue_metrics(snapshot: Snapshot) -> Iterable[Metric]:
    depth = GaugeMetricFamily(
        "shipway_queue_depth", "Queued jobs that are due, by queue.", labels=["queue"]
    )
    oldest = GaugeMetricFamily(
        "shipway_queue_oldest_age_seconds",
        "Age of the oldest due queued job, by queue (0 when empty).",
        labels=["queue"],
    )
    for stats in snapshot.queues:
        depth.add_metric([stats.name], stats.depth)
        oldest.add_metric([stats.name], stats.oldest_queued_age_seconds or 0.0)
    yield depth
    yield oldest
    yield GaugeMetricFamily(
        "shipway_workers_alive",
        "Worker processes heartbeating within 3 heartbeat intervals.",
        value=snapshot.workers_alive,
    )
    stuck = GaugeMetricFamily(
        "shipway_stuck_jobs",
        "Jobs needing attention, by stuck_reason (each job counted once).",
        labels=["reason"],
    )
    for reason, n in snapshot.stuck.items():
        stuck.add_metric([reason], n)
    yield stuck


def _release_metrics(snapshot: Snapshot) -> Iterable[Metric]:
    releases = GaugeMetricFamily("shipway_releases", "Releases by status.", labels=["status"])
    for status in sorted(RELEASE.states | set(snapshot.releases)):
        releases.add_metric([status], snapshot.releases.get(status, 0))
    yield releases
    yield CounterMetricFamily(
        "shipway_rollbacks",
        "Rollbacks performed (releases that were rolled back to).",
        value=snapshot.rollbacks,
    )
    yield CounterMetricFamily(
        "shipway_canary_aborts",
        "Canary releases that failed their analysis and were aborted.",
        value=snapshot.canary_aborts,
    )


_collectors: dict[str, ShipwayCollector] = {}
_collectors_lock = threading.Lock()


def collector_for(database_url: str) -> ShipwayCollector:
    """The collector of one database (its kept totals live as long as the process)."""
    with _collectors_lock:
        if database_url not in _collectors:
            _collectors[database_url] = ShipwayCollector(engine_for(database_url))
        return _collectors[database_url]
