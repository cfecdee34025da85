"""Follow a job live: its server-sent events, or polling ``GET /jobs/{id}`` as a fallback.

``follow_job`` turns either source into the same ``Update``s (``phase``, ``progress``,
``log``, ``state``, ``transition``) handed to a callback, and returns the job's end
(``{job_id, state, failure_reason, failure_diagnostics, result}``). ``JobDisplay`` is
the callback the commands use: one line per phase and canary step, build log lines,
and a spinner with the current phase and elapsed time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.text import Text

from shipway.client.api import ClientError, ShipwayClient
from shipway.client.render.canary import canary_line
from shipway.client.render.cells import scalars

Json = dict[str, Any]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
POLL_SECONDS = 1.0
RECONNECTS = 5


@dataclass(frozen=True)
class Update:
    """One thing that happened to the job."""

    kind: str  # phase | progress | log | state | transition
    data: Json


def _end_of(job: Json) -> Json:
    return {
        "job_id": job["id"],
        "state": job["state"],
        "failure_reason": job.get("failure_reason"),
        "failure_diagnostics": job.get("failure_diagnostics"),
        "result": job.get("result"),
    }


def _stream(client: ShipwayClient, job_id: str, on_update: Callable[[Update], None]) -> Json | None:
    """Follow the event stream, reconnecting with ``Last-Event-ID``; ``None``: cannot stream."""
    cursor: str | None = None
    failures = 0
    while True:
        try:
            for message in client.job_events(job_id=job_id, last_event_id=cursor):
                failures = 0
                cursor = message.id or cursor
                data = message.data if isinstance(message.data, dict) else {"value": message.data}
                if message.event == "end":
                    return data
                if message.event == "phase":
                    on_update(Update("phase", {"phase": data.get("to_state"), **data}))
                elif message.event == "progress":
                    on_update(Update("progress", data))
                elif message.event == "log":
                    on_update(Update("log", data))
                elif message.event in ("state", "transition"):
                    on_update(Update(message.event, data))
        except ClientError as error:
            if error.status is not None and error.status < 500:
                if error.route_missing or error.status in (406, 415):
                    return None  # an API without the stream: poll instead
                raise
            failures += 1
            if failures > RECONNECTS:
                return None
            time.sleep(min(0.5 * 2**failures, 5.0))
            continue
        # The stream closed without an ``end``: reconnect from the cursor.
        failures += 1
        if failures > RECONNECTS:
            return None


def _poll(
    client: ShipwayClient,
    job_id: str,
    on_update: Callable[[Update], None],
    *,
    interval: float,
    with_log: bool,
) -> Json:
    """Follow by polling the job (and the build log of a publish job) until it ends."""
    last_state: str | None = None
    last_phase: str | None = None
    last_progress: Json | None = None
    log_seen = 0
    while True:
        job = client.get_job(job_id=job_id)
        if job["state"] != last_state:
            on_update(Update("state", {"subject_type": "job", "to_state": job["state"]}))
            last_state = job["state"]
        if job.get("phase") and job["phase"] != last_phase:
            last_phase = job["phase"]
            on_update(Update("phase", {"phase": last_phase, "data": job.get("progress") or {}}))
        if job.get("progress") != last_progress:
            last_progress = job.get("progress")
            data = {"job_id": job_id, "phase": job.get("phase"), "progress": last_progress}
            on_update(Update("progress", data))
        if (
            with_log
            and job.get("kind") == "publish"
            and job.get("version_id")
            and job.get("deployment_id")
        ):
            text = client.build_log(
                deployment_id=job["deployment_id"], version_id=job["version_id"]
            )
            if len(text) < log_seen:  # a retried build restarted its log
                log_seen = 0
            fresh = text[log_seen:]
            complete = fresh if job["state"] in TERMINAL else fresh[: fresh.rfind("\n") + 1]
            for line in complete.splitlines():
                on_update(Update("log", {"job_id": job_id, "line": line}))
            log_seen += len(complete)
        if job["state"] in TERMINAL:
            return _end_of(job)
        time.sleep(interval)


def follow_job(
    client: ShipwayClient,
    *,
    job_id: str,
    on_update: Callable[[Update], None],
    poll_interval: float = POLL_SECONDS,
    with_log: bool = True,
) -> Json:
    """Follow a job until it ends; returns its end. Streams unless ``SHIPWAY_CLI_POLL`` is set."""
    if not os.environ.get("SHIPWAY_CLI_POLL"):
        end = _stream(client, job_id, on_update)
        if end is not None:
            return end
    return _poll(client, job_id, on_update, interval=poll_interval, with_log=with_log)


@dataclass
class JobDisplay:
    """Prints a job's updates as they arrive, with a spinner for the current phase."""

    console: Console
    job_id: str
    show_log: bool = True
    started: float = field(default_factory=time.monotonic)
    phase: str | None = None
    canary: tuple[Any, ...] | None = None
    analysis: Any = None
    health: tuple[Any, ...] | None = None
    status: Status | None = None
    detail: str = ""

    def __enter__(self) -> JobDisplay:
        self.status = self.console.status(self._status_text(), spinner="dots")
        self.status.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def _status_text(self) -> str:
        elapsed = time.monotonic() - self.started
        phase = self.phase or "waiting for a worker"
        detail = f" · {escape(self.detail)}" if self.detail else ""
        return f"[cyan]{self.job_id}[/] {phase} · {elapsed:.0f}s{detail}"

    def __call__(self, update: Update) -> None:
        """Show one update."""
        data = update.data
        if update.kind == "log":
            if self.show_log:
                self.console.print(Text(str(data.get("line", "")), style="dim"), soft_wrap=True)
        elif update.kind == "phase":
            self.phase = str(data.get("phase"))
            details = data.get("data") if isinstance(data.get("data"), dict) else {}
            suffix = f" [dim]({scalars(details)})[/]" if details and scalars(details) else ""
            self.console.print(f"[bold]==>[/] phase [bold]{self.phase}[/]{suffix}")
        elif update.kind == "progress":
            self._progress(data.get("progress") or {})
        elif update.kind == "state":
            requeued = data.get("from_state") == "running" and data.get("to_state") == "queued"
            if data.get("subject_type") == "job" and requeued:
                self.console.print("[yellow]job requeued (its worker was lost)[/]")
        elif update.kind == "transition":
            subject = data.get("subject_type")
            if subject == "canary":
                if not str(data.get("to_state")).startswith("analysis"):  # progress shows those
                    reason = data.get("reason") or data.get("to_state")
                    self.console.print(f"[dim]canary: {reason}[/]")
                return self._refresh()
            self.console.print(
                f"[dim]{subject} {data.get('subject_id')}: "
                f"{data.get('from_state') or '∅'} → [/]{data.get('to_state')}"
            )
        self._refresh()

    def _refresh(self) -> None:
        if self.status is not None:
            self.status.update(self._status_text())

    def _progress(self, progress: Json) -> None:
        canary = progress.get("canary")
        if isinstance(canary, dict):
            key = (
                canary.get("state"),
                canary.get("step_index"),
                canary.get("weight"),
                canary.get("paused"),
            )
            analysis = canary.get("last_analysis") or {}
            verdict = analysis.get("verdict") if isinstance(analysis, dict) else None
            if key != self.canary or verdict != self.analysis:
                self.canary, self.analysis = key, verdict
                self.console.print(canary_line(canary))
            self.detail = canary_line(canary).plain
        if "healthy" in progress and "total" in progress:
            health = (progress.get("healthy"), progress.get("total"))
            if health != self.health:
                self.health = health
                self.console.print(
                    f"    healthy replicas {health[0]}/{health[1]}"
                    + (f" [dim]({progress['path']})[/]" if progress.get("path") else "")
                )


def watch_job(
    client: ShipwayClient,
    *,
    job_id: str,
    console: Console,
    show_log: bool = True,
    poll_interval: float = POLL_SECONDS,
) -> Json:
    """Follow a job with a ``JobDisplay``; returns its end (prints nothing about the end)."""
    try:
        with JobDisplay(console=console, job_id=job_id, show_log=show_log) as display:
            return follow_job(client, job_id=job_id, on_update=display, poll_interval=poll_interval)
    except KeyboardInterrupt:
        console.print(
            f"\n[yellow]stopped following; {job_id} keeps running on the server[/] "
            f"(follow again: shipway jobs show {job_id} --follow; stop it: shipway jobs cancel "
            f"{job_id})"
        )
        raise
