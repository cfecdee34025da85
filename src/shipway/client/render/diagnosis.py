"""The panel that explains a failure: title, description, action and evidence."""

from __future__ import annotations

from typing import Any

from rich.panel import Panel
from rich.text import Text

from shipway.client.render.cells import Json, scalars


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
        lines = [scalars(v) if isinstance(v, dict) else str(v) for v in value]
        shown = lines[-max_lines:]
        more = f"(… {len(lines) - len(shown)} earlier)\n    " if len(lines) > len(shown) else ""
        return ("\n    " + more + "\n    ".join(shown)) if shown else "[]"
    if isinstance(value, dict):
        return scalars(value) or str(value)[:300]
    text = str(value)
    return text if len(text) <= 400 else text[:400] + "…"
