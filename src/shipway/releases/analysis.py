"""Canary analysis: pure functions over HAProxy per-server counters (no I/O).

A snapshot maps server name → cumulative counters. The analysis of one interval
is the difference of two snapshots, summed over the canary's servers, judged
against the strategy's thresholds. HAProxy resets its counters on a reload (a
route added or removed elsewhere): a counter that went *down* is taken as reset
and its new value is the delta (what was counted since the reload). That is a
lower bound of the real traffic, never an invented one; the interval records
which servers were reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shipway.deployments.strategy import CanaryAnalysis
from shipway.router.base import MAX_WEIGHT, ServerStats

Verdict = Literal["pass", "fail", "inconclusive"]
MAX_KEPT_ANALYSES = 50


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one server (or a sum of servers)."""

    requests: int = 0
    errors_5xx: int = 0
    rtime_ms: int = 0  # average response time of the last 1024 requests (not cumulative)

    @classmethod
    def of(cls, stats: ServerStats) -> Counters:
        """Counters of one ``show stat`` row; requests = responses seen when req_tot is 0."""
        responses = (
            stats.hrsp_1xx + stats.hrsp_2xx + stats.hrsp_3xx + stats.hrsp_4xx + stats.hrsp_5xx
        )
        return cls(
            requests=max(stats.req_tot, responses),
            errors_5xx=stats.hrsp_5xx,
            rtime_ms=stats.rtime_ms,
        )


Snapshot = dict[str, Counters]


def snapshot(stats: Iterable[ServerStats], *, prefix: str) -> Snapshot:
    """The counters of the servers whose name starts with ``prefix``."""
    return {s.name: Counters.of(s) for s in stats if s.name.startswith(prefix)}


@dataclass(frozen=True)
class Delta:
    """Traffic of a group of servers during one interval."""

    requests: int
    errors_5xx: int
    avg_latency_ms: float | None  # request-weighted average of the servers' rtime
    reset_servers: tuple[str, ...]


def _counter_delta(before: int, after: int) -> tuple[int, bool]:
    """(delta, reset): a counter that went down was reset; its new value is the delta."""
    return (after, True) if after < before else (after - before, False)


def delta(before: Mapping[str, Counters], after: Mapping[str, Counters]) -> Delta:
    """Requests and 5xx between two snapshots; a server absent before counts from zero."""
    requests = errors = 0
    resets: list[str] = []
    weighted_latency = 0.0
    for name, now in sorted(after.items()):
        then = before.get(name, Counters())
        got, reset_r = _counter_delta(then.requests, now.requests)
        bad, reset_e = _counter_delta(then.errors_5xx, now.errors_5xx)
        if reset_r or reset_e:
            resets.append(name)
            got, bad = now.requests, now.errors_5xx  # both since the reload
        requests += got
        errors += min(bad, got) if got else bad
        weighted_latency += now.rtime_ms * got
    latency = round(weighted_latency / requests, 1) if requests else None
    return Delta(requests, errors, latency, tuple(resets))


def judge(measured: Delta, rules: CanaryAnalysis) -> tuple[Verdict, list[str]]:
    """The verdict of one interval and why; too few requests is inconclusive, never a pass."""
    if measured.requests < rules.min_requests:
        return "inconclusive", [
            f"{measured.requests} canary requests < min_requests {rules.min_requests}"
        ]
    reasons: list[str] = []
    rate = measured.errors_5xx / measured.requests
    if rate > rules.max_error_rate:
        reasons.append(f"error rate {rate:.4f} > max_error_rate {rules.max_error_rate}")
    limit = rules.max_p95_latency_ms
    latency = measured.avg_latency_ms
    if limit is not None and latency is not None and latency > limit:
        reasons.append(f"average latency {latency} ms > max_p95_latency_ms {limit}")
    return ("fail", reasons) if reasons else ("pass", [])


def interval_result(
    *,
    at: datetime,
    step_index: int,
    weight: int,
    canary: Delta,
    stable: Delta,
    rules: CanaryAnalysis,
) -> dict[str, Any]:
    """The JSON record of one analysed interval (visible on the release and the job)."""
    verdict, reasons = judge(canary, rules)
    total = canary.requests + stable.requests
    return {
        "at": at.isoformat().replace("+00:00", "Z"),
        "step_index": step_index,
        "weight": weight,
        "requests": canary.requests,
        "errors_5xx": canary.errors_5xx,
        "error_rate": round(canary.errors_5xx / canary.requests, 6) if canary.requests else None,
        "avg_latency_ms": canary.avg_latency_ms,
        "stable_requests": stable.requests,
        "stable_errors_5xx": stable.errors_5xx,
        "observed_share": round(canary.requests / total, 4) if total else None,
        "counter_resets": list(canary.reset_servers + stable.reset_servers),
        "verdict": verdict,
        "reasons": reasons,
    }


def server_weights(percent: int, *, stable_servers: int, canary_servers: int) -> tuple[int, int]:
    """(stable, canary) per-server HAProxy weights giving the canary ``percent`` of requests.

    Round-robin share of the canary is ``c·Wc / (c·Wc + s·Ws)``; ``Wc = percent·s`` and
    ``Ws = (100 - percent)·c`` make it exact. When that passes HAProxy's maximum
    weight (256), the closest integer pair within 1..256 is chosen.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be 0-100, not {percent}")
    s, c = stable_servers, canary_servers
    if percent == 0 or c == 0:
        return (100, 0)
    if percent == 100 or s == 0:
        return (0, 100)
    exact = ((100 - percent) * c, percent * s)
    if max(exact) <= MAX_WEIGHT:
        return exact
    best = (1, 1)
    best_error = 2.0
    for canary_weight in range(1, MAX_WEIGHT + 1):
        ideal = canary_weight * c * (100 - percent) / (percent * s)
        stable_weight = min(MAX_WEIGHT, max(1, round(ideal)))
        error = abs(share((stable_weight, canary_weight), s, c) - percent / 100)
        if error < best_error:
            best, best_error = (stable_weight, canary_weight), error
    return best


def share(weights: tuple[int, int], stable_servers: int, canary_servers: int) -> float:
    """The canary's share of requests that ``weights`` give."""
    stable = weights[0] * stable_servers
    canary = weights[1] * canary_servers
    return canary / (stable + canary) if stable + canary else 0.0


def keep_last(analyses: list[dict[str, Any]], result: dict[str, Any]) -> list[dict[str, Any]]:
    """The analyses list with ``result`` appended, at most the last 50 kept."""
    return [*analyses, result][-MAX_KEPT_ANALYSES:]


def failure_diagnostics(
    *,
    rules: CanaryAnalysis,
    analyses: list[dict[str, Any]],
    cause: Literal["thresholds", "inconclusive"],
    release_id: str,
    stable_release_id: str,
) -> dict[str, Any]:
    """``canary_analysis_failed`` diagnostics: what was measured against which thresholds."""
    failed = [a for a in analyses if a["verdict"] == "fail"]
    if cause == "thresholds":
        title = "Canary analysis failed"
        description = (
            f"{len(failed)} analysis interval(s) of the canary broke its thresholds "
            f"(failure_limit {rules.failure_limit}); its traffic was set to 0 and its "
            "replicas removed."
        )
    else:
        title = "Canary analysis inconclusive: too little traffic"
        description = (
            f"{rules.max_inconclusive} intervals in a row had fewer than "
            f"{rules.min_requests} canary requests, so the canary could not be judged; "
            "it was aborted rather than promoted on no data."
        )
    return {
        "title": title,
        "description": description,
        "action": (
            f"Look at the canary's logs and its failing requests (release {release_id}); "
            f"the stable release {stable_release_id} kept serving, untouched. Fix and "
            "promote again, or adjust the analysis thresholds if they were too strict."
        ),
        "evidence": {
            "cause": cause,
            "thresholds": rules.model_dump(),
            "failed_intervals": len(failed),
            "intervals": analyses[-20:],
        },
    }
