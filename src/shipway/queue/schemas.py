"""Response models of ``GET /queue``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shipway.domains.schemas import CertificateAttention
from shipway.schemas import ReadModel, Timestamp

StuckReason = Literal["lease_expired", "deadline_passed", "queued_too_long"]


class QueueStats(BaseModel):
    """One Celery queue (``builds`` or ``rollouts``) as the job table sees it."""

    name: str
    depth: int = Field(description="Queued jobs that are due (may be claimed now)")
    delayed: int = Field(description="Queued jobs waiting for their not_before time")
    running: int
    oldest_queued_age_seconds: float | None = Field(
        description="Age of the oldest due queued job, from acceptance (or its not_before "
        "time, if later); a job requeued after a lost worker keeps its age; null if none"
    )
    oldest_job_id: str | None


class WorkerRef(BaseModel):
    """The worker process that holds a job's lease."""

    id: str
    hostname: str
    pid: int
    heartbeat_age_seconds: float
    alive: bool


class RunningJob(BaseModel):
    """A running job."""

    id: str
    kind: str
    queue: str
    phase: str | None
    attempt: int
    elapsed_seconds: float = Field(description="Since the job first started")
    started_at: Timestamp | None
    heartbeat_at: Timestamp | None
    lease_owner: str | None
    deployment_id: str | None
    environment: str | None
    progress: dict[str, Any]
    worker: WorkerRef | None = Field(description="Worker row matching the lease owner's host/pid")


class RunningGroup(BaseModel):
    """Running jobs of one kind in one phase."""

    kind: str
    phase: str | None
    count: int
    jobs: list[RunningJob]


class WorkerRead(BaseModel):
    """A registered worker process (a Celery prefork child)."""

    id: str
    hostname: str
    pid: int
    node: str | None = Field(description="Celery node name of the worker it belongs to")
    queues: list[str]
    started_at: Timestamp
    heartbeat_at: Timestamp
    heartbeat_age_seconds: float
    alive: bool = Field(description="Heartbeat younger than 3 heartbeat intervals, not stopped")
    busy: bool = Field(description="Running a job (as of its last heartbeat)")
    current_job_id: str | None = Field(
        description="The job it runs; null when idle or when the job is another workspace's"
    )
    stopped_at: Timestamp | None = Field(description="Set when the process exited cleanly")


class SupervisedWorkerRead(BaseModel):
    """A worker process ``shipway up`` started and watches."""

    queues: list[str]
    pid: int | None = Field(description="Null while it waits to be restarted")
    alive: bool
    restarts: int = Field(description="Times it exited and was started again")
    last_exit: str | None = Field(description="How it last stopped: exit code or signal")
    restart_in_seconds: float | None = Field(description="Until its restart, while down")


class WorkersSummary(BaseModel):
    """Counts of worker processes (shown to every caller)."""

    alive: int
    dead: int = Field(description="Seen in the last hour, no longer alive (stopped or silent)")
    alive_after_seconds: float = Field(
        description="A worker whose heartbeat is older than this is dead"
    )
    supervised: list[SupervisedWorkerRead] | None = Field(
        default=None,
        description="Under `shipway up`: its workers as it sees them (one per queue group), "
        "restarted with backoff when one dies; null otherwise",
    )


class StuckJob(BaseModel):
    """A job that needs attention."""

    id: str
    kind: str
    queue: str
    state: str
    phase: str | None
    stuck_reason: StuckReason = Field(
        description="lease_expired: its worker stopped heartbeating (the reaper requeues or "
        "fails it); deadline_passed: still not finished at its deadline; queued_too_long: "
        "due but unclaimed for longer than stuck_after_seconds (no worker for its queue?)"
    )
    stuck_since: Timestamp
    stuck_for_seconds: float
    attempts: int
    max_attempts: int
    lease_owner: str | None
    deployment_id: str | None
    environment: str | None


class FailureGroup(BaseModel):
    """Jobs that failed in the last hour for one reason."""

    failure_reason: str
    count: int
    latest_job_id: str
    latest_finished_at: Timestamp


class RolloutJob(BaseModel):
    """A rollout job of one (deployment, environment)."""

    id: str
    kind: str
    state: str
    version_id: str | None
    release_id: str | None
    position: int | None = Field(
        description="Queue position as in GET /jobs/{id}: 1 = next to run; the running job "
        "counts as ahead, a delayed job (not_before in the future) does not; null for "
        "the running one"
    )
    not_before: Timestamp | None = Field(description="A delayed job waits until then")
    created_at: Timestamp
    age_seconds: float


class RolloutLine(BaseModel):
    """The running rollout of one (deployment, environment) and those waiting behind it."""

    deployment_id: str | None
    environment: str | None
    serial_key: str
    running: RolloutJob | None
    waiting: list[RolloutJob]


class StorageRead(ReadModel):
    """Free space of the data directory (sources, build logs, SQLite, the embedded queue)."""

    free_bytes: int
    total_bytes: int
    min_free_bytes: int = Field(description="SHIPWAY_MIN_FREE_BYTES: below it, low is true")
    low: bool = Field(description="Free space is below min_free_bytes: free some soon")
    exhausted: bool = Field(
        description="Free space is at or below SHIPWAY_RESERVED_FREE_BYTES: publishes answer "
        "507 insufficient_storage and /readyz 503 until space is freed"
    )


class QueueView(BaseModel):
    """Operator view of the job queue of one workspace."""

    generated_at: Timestamp
    workspace_id: str
    stuck_after_seconds: float
    queues: list[QueueStats]
    running: list[RunningGroup]
    workers: list[WorkerRead] | None = Field(
        description="Every worker seen in the last hour: admin tokens only (null otherwise; "
        "other callers see the worker of each of their running jobs and workers_summary)"
    )
    workers_summary: WorkersSummary
    stuck: list[StuckJob]
    failures_last_hour: list[FailureGroup]
    rollouts: list[RolloutLine]
    certificates: list[CertificateAttention] = Field(
        default_factory=list,
        description="Certificates whose last issuance or renewal failed, or that expire "
        "within 14 days (the site keeps serving meanwhile)",
    )
    storage: StorageRead = Field(description="Free space of the data directory (docs/storage.md)")
