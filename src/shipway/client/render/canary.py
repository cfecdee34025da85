"""A canary's live state in one line, and the verdict of one canary analysis."""

from __future__ import annotations

from rich.text import Text

from shipway.client.render.cells import STATE_STYLES, Json, scalars

ANALYSIS_FIELDS = ("requests", "errors_5xx", "error_rate", "p95_latency_ms", "avg_latency_ms")


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


def analysis_summary(analysis: Json) -> Text:
    """``pass: 120 requests, 0 errors_5xx, error_rate=0`` from one canary analysis."""
    verdict = str(analysis.get("verdict") or analysis.get("result") or "?")
    style = {"pass": "green", "passed": "green", "fail": "red", "failed": "red"}.get(verdict, "")
    text = Text(verdict, style=style or "yellow")
    shown = {k: analysis[k] for k in ANALYSIS_FIELDS if analysis.get(k) is not None}
    if shown:
        text.append(" (" + scalars(shown) + ")", style="dim")
    return text
