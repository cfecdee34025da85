"""``list`` tables and ``show`` views of deployments, versions (with releases) and jobs."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shipway.client.render.canary import canary_line
from shipway.client.render.cells import Json, column_table, key_values, plain, scalars, styled
from shipway.client.render.diagnosis import diagnosis

# --------------------------------------------------------------------------- deployments


def _environment_cell(env: Json) -> str:
    number = env.get("active_version_number")
    status = f" {env['status']}" if env.get("status") else ""
    return f"{env['name']}:{'v' + str(number) if number else '-'}{status}"


def deployments_table(rows: list[Json]) -> Table:
    """``deployments list``."""
    table = column_table("ID", "NAME", "KIND", "VERSIONS", "ENVIRONMENTS", "CREATED")
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
    envs = column_table("ENVIRONMENT", "ACTIVE VERSION", "STATUS", "REPLICAS", "URL")
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
    table = column_table("ID", "#", "KIND", "STATE", "PROMOTED", "CREATED")
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
    table = column_table("RELEASE", "ENVIRONMENT", "STATUS", "REPLICAS", "DEPLOYED", "ROLLBACKS")
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
    table = column_table("ID", "KIND", "STATE", "PHASE", "DEPLOYMENT", "ENV", "VERSION", "CREATED")
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
        parts.append(Text("progress: " + scalars(progress), style="dim"))
    if row.get("result"):
        parts.append(Text("result: " + scalars(row["result"]), style="dim"))
    if row.get("failure_reason"):
        parts.append(diagnosis(row["failure_reason"], row.get("failure_diagnostics")))
    return Group(*parts)
