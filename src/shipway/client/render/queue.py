"""``shipway queue``: the same sections as ``GET /queue``."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from shipway.client.render.cells import Json, column_table, duration, plain, styled


def queue_view(view: Json) -> RenderableType:
    """``queue``: the same sections as ``GET /queue``."""
    parts: list[RenderableType] = []
    queues = column_table("QUEUE", "DEPTH", "DELAYED", "RUNNING", "OLDEST QUEUED", title="Queues")
    for q in view.get("queues") or []:
        age = q.get("oldest_queued_age_seconds")
        queues.add_row(
            q["name"],
            str(q.get("depth", 0)),
            str(q.get("delayed", 0)),
            str(q.get("running", 0)),
            f"{duration(age)} ({q['oldest_job_id']})" if q.get("oldest_job_id") else duration(age),
        )
    parts.append(queues)

    running = column_table(
        "JOB", "KIND", "PHASE", "ELAPSED", "DEPLOYMENT", "ENV", "WORKER", title="Running jobs"
    )
    for group in view.get("running") or []:
        for job in group.get("jobs") or []:
            worker = job.get("worker") or {}
            phase = Text(plain(job.get("phase")))
            canary = (job.get("progress") or {}).get("canary")
            if isinstance(canary, dict) and canary.get("weight") is not None:
                label = "" if job.get("phase") == "canary" else " canary"
                phase.append(f"{label} {canary['weight']}%", style="cyan")
            running.add_row(
                job["id"],
                job.get("kind", "-"),
                phase,
                duration(job.get("elapsed_seconds")),
                plain(job.get("deployment_id")),
                plain(job.get("environment")),
                f"{worker.get('hostname')}/{worker.get('pid')}"
                if worker
                else plain(job.get("lease_owner")),
            )
    parts.append(running if running.row_count else Text("Running jobs: none", style="dim"))

    summary = view.get("workers_summary") or {}
    workers_title = f"Workers ({summary.get('alive', 0)} alive, {summary.get('dead', 0)} dead)"
    if view.get("workers") is None:
        parts.append(Text(workers_title + " — details need an admin token", style="dim"))
    else:
        workers = column_table(
            "WORKER", "NODE", "QUEUES", "STATE", "HEARTBEAT", "JOB", title=workers_title
        )
        for w in view["workers"]:
            state = Text("alive", style="green") if w.get("alive") else Text("dead", style="red")
            if w.get("alive") and w.get("busy"):
                state.append(" busy", style="cyan")
            if w.get("stopped_at"):
                state = Text("stopped", style="dim")
            workers.add_row(
                f"{w.get('hostname')}/{w.get('pid')}",
                plain(w.get("node")),
                ",".join(w.get("queues") or []),
                state,
                duration(w.get("heartbeat_age_seconds")) + " ago",
                plain(w.get("current_job_id")),
            )
        parts.append(workers)

    stuck = view.get("stuck") or []
    if stuck:
        table = column_table(
            "JOB", "KIND", "STATE", "PHASE", "REASON", "FOR", "ATTEMPTS", title="[red]Stuck jobs"
        )
        for job in stuck:
            table.add_row(
                job["id"],
                job.get("kind", "-"),
                styled(job.get("state")),
                plain(job.get("phase")),
                job.get("stuck_reason", "-"),
                duration(job.get("stuck_for_seconds")),
                f"{job.get('attempts')}/{job.get('max_attempts')}",
                style="bold red",
            )
        parts.append(table)
    else:
        parts.append(Text("Stuck jobs: none", style="dim"))

    failures = view.get("failures_last_hour") or []
    if failures:
        table = column_table(
            "REASON", "COUNT", "LATEST JOB", "AT", title="Failures in the last hour"
        )
        for f in failures:
            table.add_row(
                Text(f["failure_reason"], style="red"),
                str(f.get("count")),
                f.get("latest_job_id", "-"),
                plain(f.get("latest_finished_at")),
            )
        parts.append(table)
    else:
        parts.append(Text("Failures in the last hour: none", style="dim"))

    lines = view.get("rollouts") or []
    if lines:
        table = column_table("DEPLOYMENT", "ENV", "RUNNING", "WAITING (position)", title="Rollouts")
        for line in lines:
            now = line.get("running")
            waiting = ", ".join(
                f"#{w.get('position') or '-'} {w['id']} ({w.get('kind')}"
                + (f", after {plain(w['not_before'])}" if w.get("not_before") else "")
                + ")"
                for w in line.get("waiting") or []
            )
            table.add_row(
                plain(line.get("deployment_id")),
                plain(line.get("environment")),
                f"{now['id']} ({now.get('kind')})" if now else "-",
                waiting or "-",
            )
        parts.append(table)
    else:
        parts.append(Text("Rollouts waiting: none", style="dim"))
    parts.append(_storage(view.get("storage")))
    parts.append(
        Text(
            f"generated {plain(view.get('generated_at'))} · workspace {view.get('workspace_id')}",
            style="dim",
        )
    )
    return Group(*parts)


def _storage(storage: Json | None) -> Text:
    """One line: the data directory's free space, red when exhausted, yellow when low."""
    if not storage:
        return Text("Storage: not reported", style="dim")
    free, total = storage.get("free_bytes", 0), storage.get("total_bytes", 0)
    line = f"Storage: {free / 2**20:.1f} MiB free of {total / 2**20:.1f} MiB"
    if storage.get("exhausted"):
        return Text(f"{line} — exhausted: publishes answer 507 until space is freed", "bold red")
    if storage.get("low"):
        return Text(
            f"{line} — low (below {storage.get('min_free_bytes', 0) / 2**20:.1f} MiB)", "yellow"
        )
    return Text(line, style="dim")
