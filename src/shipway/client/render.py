"""Rich tables and panels for the client's human output (``--json`` bypasses all of this)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

Json = dict[str, Any]

STATE_STYLES = {
    "ready": "green",
    "succeeded": "green",
    "ACTIVE": "bold green",
    "running": "cyan",
    "building": "cyan",
    "DEPLOYING": "cyan",
    "queued": "yellow",
    "created": "yellow",
    "DRAINING": "yellow",
    "UNHEALTHY": "bold red",
    "failed": "red",
    "FAILED": "red",
    "cancelled": "magenta",
    "ROLLED_BACK": "magenta",
    "archived": "dim",
    "RETIRED": "dim",
}


def styled(value: Any) -> Text:
    """A state or status, coloured by what it means."""
    if value is None:
        return Text("-", style="dim")
    text = str(value)
    return Text(text, style=STATE_STYLES.get(text, ""))


def plain(value: Any) -> str:
    """A cell: ``-`` for nothing, compact timestamps, everything else as text."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        return value[:19].replace("T", " ") + "Z"  # RFC 3339 without fractions
    return str(value)


def duration(seconds: float | None) -> str:
    """``4s``, ``2m05s``, ``1h02m`` (``-`` for none)."""
    if seconds is None:
        return "-"
    total = int(max(0.0, seconds))
    if total < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def age_of(timestamp: str | None, now: datetime | None = None) -> float | None:
    """Seconds since an RFC 3339 timestamp."""
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ((now or datetime.now(UTC)) - moment).total_seconds()


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")  # ids wrap whole, never cut with "…"
    return table


def key_values(rows: Iterable[tuple[str, Any]], *, title: str | None = None) -> Table:
    """A two-column table of fields."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else plain(value))
    if title:
        table.title, table.title_justify = title, "left"
    return table


# --------------------------------------------------------------------------- deployments


def _environment_cell(env: Json) -> str:
    number = env.get("active_version_number")
    status = f" {env['status']}" if env.get("status") else ""
    return f"{env['name']}:{'v' + str(number) if number else '-'}{status}"


def deployments_table(rows: list[Json]) -> Table:
    """``deployments list``."""
    table = _table("ID", "NAME", "KIND", "VERSIONS", "ENVIRONMENTS", "CREATED")
    for row in rows:
        envs = ", ".join(_environment_cell(e) for e in row.get("environments") or [])
        table.add_row(
            row["id"],
            row["name"],
            row["kind"],
            str(row.get("latest_version_number", 0)),
            envs or "-",
            plain(row.get("created_at")),
        )
    return table


def deployment_view(row: Json) -> RenderableType:
    """``deployments show``."""
    fields = key_values(
        [
            ("id", row["id"]),
            ("name", row["name"]),
            ("kind", row["kind"]),
            ("replicas", row.get("replicas")),
            ("runtime port", row.get("runtime_port")),
            ("runtime command", row.get("runtime_command")),
            ("health check", row.get("health_check_path")),
            ("latest version", row.get("latest_version_number")),
            ("created", row.get("created_at")),
        ]
    )
    envs = _table("ENVIRONMENT", "ACTIVE VERSION", "STATUS", "REPLICAS", "URL")
    for env in row.get("environments") or []:
        version = env.get("active_version_id")
        number = env.get("active_version_number")
        envs.add_row(
            env["name"],
            f"v{number} {version}" if version else "-",
            styled(env.get("status")),
            str(env.get("replicas", 0)),
            plain(env.get("public_url")),
        )
    return Group(fields, Text(""), envs)


# --------------------------------------------------------------------------- versions


def versions_table(rows: list[Json]) -> Table:
    """``versions list``."""
    table = _table("ID", "#", "KIND", "STATE", "PROMOTED", "CREATED")
    for row in rows:
        table.add_row(
            row["id"],
            str(row.get("version_number")),
            row.get("kind", "-"),
            styled(row.get("state")),
            plain(row.get("promoted_at")),
            plain(row.get("created_at")),
        )
    return table


def releases_table(rows: list[Json]) -> Table:
    """Releases of a version, one per environment."""
    table = _table("RELEASE", "ENVIRONMENT", "STATUS", "REPLICAS", "DEPLOYED", "ROLLBACKS")
    for row in rows:
        table.add_row(
            row["id"],
            row["environment"],
            styled(row.get("status")),
            str(row.get("replicas", 0)),
            plain(row.get("deployed_at")),
            str(row.get("rollback_count", 0)),
        )
    return table


def version_view(row: Json) -> RenderableType:
    """``versions show``: the row, its releases and any diagnosis."""
    fields = key_values(
        [
            ("id", row["id"]),
            ("deployment", row.get("deployment_id")),
            ("version", row.get("version_number")),
            ("state", styled(row.get("state"))),
            (f"status ({row.get('environment', 'production')})", styled(row.get("status"))),
            ("image", row.get("runtime_image") or row.get("image_url")),
            ("image expires", row.get("image_expires_at")),
            ("pinned", row.get("pinned")),
            ("git", " ".join(p for p in (row.get("git_branch"), row.get("git_hash")) if p)),
            ("author", row.get("author_name")),
            ("created", row.get("created_at")),
            ("promoted", row.get("promoted_at")),
        ]
    )
    parts: list[RenderableType] = [fields]
    if row.get("releases"):
        parts += [Text(""), releases_table(row["releases"])]
    reason = row.get("build_failure_reason") or row.get("failure_reason")
    diagnostics = row.get("build_failure_diagnostics") or row.get("failure_diagnostics")
    if reason or diagnostics:
        parts.append(diagnosis(reason, diagnostics))
    for release in row.get("releases") or []:
        if release.get("failure_reason") and release.get("failure_reason") != reason:
            parts.append(
                diagnosis(
                    release["failure_reason"],
                    release.get("failure_diagnostics"),
                    subject=f"release {release['id']} ({release['environment']})",
                )
            )
    return Group(*parts)


# --------------------------------------------------------------------------- jobs


def jobs_table(rows: list[Json]) -> Table:
    """``jobs list``."""
    table = _table("ID", "KIND", "STATE", "PHASE", "DEPLOYMENT", "ENV", "VERSION", "CREATED")
    for row in rows:
        state = styled(row.get("state"))
        if row.get("state") == "queued" and row.get("queue_position"):
            state.append(f" #{row['queue_position']}", style="dim")
        if row.get("failure_reason"):
            state.append(f" {row['failure_reason']}", style="red")
        table.add_row(
            row["id"],
            row.get("kind", "-"),
            state,
            plain(row.get("phase")),
            plain(row.get("deployment_id")),
            plain(row.get("environment")),
            plain(row.get("version_id")),
            plain(row.get("created_at")),
        )
    return table


def canary_line(canary: Json) -> Text:
    """One line of a canary's live state."""
    text = Text("canary ", style="bold")
    state = canary.get("state")
    text.append(str(state or "-"), style=STATE_STYLES.get(str(state), "cyan"))
    step, count = canary.get("step_index"), canary.get("step_count")
    if step is not None and count:
        text.append(f"  step {int(step) + 1}/{count}")
    if canary.get("weight") is not None:
        text.append(f"  weight {canary['weight']}%", style="bold")
    if canary.get("paused"):
        text.append("  PAUSED", style="bold yellow")
    analysis = canary.get("last_analysis")
    if isinstance(analysis, dict) and analysis:
        text.append("  last analysis: ", style="dim")
        text.append_text(analysis_summary(analysis))
    return text


ANALYSIS_FIELDS = ("requests", "errors_5xx", "error_rate", "p95_latency_ms", "avg_latency_ms")


def analysis_summary(analysis: Json) -> Text:
    """``pass: 120 requests, 0 errors_5xx, error_rate=0`` from one canary analysis."""
    verdict = str(analysis.get("verdict") or analysis.get("result") or "?")
    style = {"pass": "green", "passed": "green", "fail": "red", "failed": "red"}.get(verdict, "")
    text = Text(verdict, style=style or "yellow")
    shown = {k: analysis[k] for k in ANALYSIS_FIELDS if analysis.get(k) is not None}
    if shown:
        text.append(" (" + _scalars(shown) + ")", style="dim")
    return text


def _scalars(data: Json) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in data.items()
        if isinstance(v, str | int | float | bool) or v is None
    )


def job_view(row: Json) -> RenderableType:
    """``jobs show``."""
    fields = key_values(
        [
            ("id", row["id"]),
            ("kind", row.get("kind")),
            ("queue", row.get("queue")),
            ("state", styled(row.get("state"))),
            ("queue position", row.get("queue_position")),
            ("phase", row.get("phase")),
            ("attempts", f"{row.get('attempts')}/{row.get('max_attempts')}"),
            ("deployment", row.get("deployment_id")),
            ("environment", row.get("environment")),
            ("version", row.get("version_id")),
            ("release", row.get("release_id")),
            ("worker", row.get("lease_owner")),
            ("cancel requested", row.get("cancel_requested")),
            ("paused", row.get("paused")),
            ("control request", row.get("control_request")),
            ("actor", row.get("actor")),
            ("created", row.get("created_at")),
            ("started", row.get("started_at")),
            ("finished", row.get("finished_at")),
        ]
    )
    parts: list[RenderableType] = [fields]
    progress = dict(row.get("progress") or {})
    canary = progress.pop("canary", None)
    if isinstance(canary, dict):
        parts += [Text(""), canary_line(canary)]
    if progress:
        parts.append(Text("progress: " + _scalars(progress), style="dim"))
    if row.get("result"):
        parts.append(Text("result: " + _scalars(row["result"]), style="dim"))
    if row.get("failure_reason"):
        parts.append(diagnosis(row["failure_reason"], row.get("failure_diagnostics")))
    return Group(*parts)


# --------------------------------------------------------------------------- diagnosis


def diagnosis(reason: str | None, diagnostics: Json | None, *, subject: str = "") -> Panel:
    """A failure diagnosis: title, description, action and a summary of the evidence."""
    diagnostics = diagnostics or {}
    body = Text()
    title = diagnostics.get("title") or reason or "failed"
    if diagnostics.get("description"):
        body.append(str(diagnostics["description"]) + "\n")
    if diagnostics.get("action"):
        body.append("\nWhat to do: ", style="bold")
        body.append(str(diagnostics["action"]) + "\n")
    evidence = diagnostics.get("evidence")
    if isinstance(evidence, dict) and evidence:
        body.append("\nEvidence:\n", style="bold")
        for key, value in evidence.items():
            body.append(f"  {key}: ", style="dim")
            body.append(_evidence_value(value) + "\n")
    header = f"[bold red]{title}[/] [dim]({reason})[/]" if reason else f"[bold red]{title}[/]"
    if subject:
        header += f" [dim]{subject}[/]"
    body.rstrip()
    return Panel(body or Text("no diagnosis recorded"), title=header, title_align="left")


def _evidence_value(value: Any, *, max_lines: int = 12) -> str:
    if isinstance(value, list):
        if any(isinstance(v, dict) for v in value):
            max_lines = 4
        lines = [_scalars(v) if isinstance(v, dict) else str(v) for v in value]
        shown = lines[-max_lines:]
        more = f"(… {len(lines) - len(shown)} earlier)\n    " if len(lines) > len(shown) else ""
        return ("\n    " + more + "\n    ".join(shown)) if shown else "[]"
    if isinstance(value, dict):
        return _scalars(value) or str(value)[:300]
    text = str(value)
    return text if len(text) <= 400 else text[:400] + "…"


# --------------------------------------------------------------------------- queue


def queue_view(view: Json) -> RenderableType:
    """``queue``: the same sections as ``GET /queue``."""
    parts: list[RenderableType] = []
    queues = _table("QUEUE", "DEPTH", "DELAYED", "RUNNING", "OLDEST QUEUED", title="Queues")
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

    running = _table(
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
        workers = _table(
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
        table = _table(
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
        table = _table("REASON", "COUNT", "LATEST JOB", "AT", title="Failures in the last hour")
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
        table = _table("DEPLOYMENT", "ENV", "RUNNING", "WAITING (position)", title="Rollouts")
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
    parts.append(
        Text(
            f"generated {plain(view.get('generated_at'))} · workspace {view.get('workspace_id')}",
            style="dim",
        )
    )
    return Group(*parts)
