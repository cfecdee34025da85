"""Canary: strategy validation (also through the API), the pure analysis, weights, control API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shipway.deployments.strategy import AllAtOnce, Canary, CanaryAnalysis, parse_strategy
from shipway.releases.analysis import (
    Counters,
    Delta,
    delta,
    failure_diagnostics,
    interval_result,
    judge,
    keep_last,
    server_weights,
    share,
    snapshot,
)
from shipway.router.base import ServerStats
from tests.conftest import VersionFactory, auth
from tests.test_api_auth import assert_error
from tests.test_api_promote import accepted, promote

ISSUE_EXAMPLE: dict[str, Any] = {
    "type": "canary",
    "steps": [{"weight": 10, "pause_seconds": 60}, {"weight": 50, "pause_seconds": 120}],
    "analysis": {
        "interval_seconds": 10,
        "min_requests": 50,
        "max_error_rate": 0.01,
        "max_p95_latency_ms": None,
        "failure_limit": 2,
    },
}


def stats(name: str, requests: int, errors: int = 0, rtime: int = 0) -> ServerStats:
    return ServerStats(
        name=name,
        status="UP",
        weight=100,
        scur=0,
        stot=requests,
        req_tot=requests,
        hrsp_1xx=0,
        hrsp_2xx=requests - errors,
        hrsp_3xx=0,
        hrsp_4xx=0,
        hrsp_5xx=errors,
        econ=0,
        eresp=0,
        rtime_ms=rtime,
        ttime_ms=rtime,
    )


# --------------------------------------------------------------------------- strategy


def test_the_issue_example_parses_and_all_at_once_is_the_default() -> None:
    strategy = parse_strategy(ISSUE_EXAMPLE)
    assert isinstance(strategy, Canary)
    assert [s.weight for s in strategy.steps] == [10, 50]
    assert strategy.analysis.failure_limit == 2
    assert parse_strategy(None) == AllAtOnce()
    assert parse_strategy({}) == AllAtOnce()
    assert parse_strategy({"type": "all_at_once"}) == AllAtOnce()


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"type": "canary", "steps": []}, "at least 1"),
        ({"type": "canary", "steps": [{"weight": 0}]}, "greater than or equal to 1"),
        ({"type": "canary", "steps": [{"weight": 101}]}, "less than or equal to 100"),
        ({"type": "canary", "steps": [{"weight": 50}, {"weight": 20}]}, "strictly increase"),
        ({"type": "canary", "steps": [{"weight": 20}, {"weight": 20}]}, "strictly increase"),
        ({"type": "canary", "steps": [{"weight": 10, "pause_seconds": -1}]}, "greater than"),
        ({"type": "canary", "steps": [{"weight": 10}], "analysis": {"min_requests": 0}}, ">="),
        (
            {"type": "canary", "steps": [{"weight": 10}], "analysis": {"max_error_rate": 2}},
            "less than or equal to 1",
        ),
        (
            {"type": "canary", "steps": [{"weight": 10}], "analysis": {"failure_limit": 0}},
            "greater than or equal to 1",
        ),
        ({"type": "canary", "steps": [{"weight": 10, "surge": 1}]}, "Extra inputs"),
        ({"type": "blue_green"}, "does not match any of the expected tags"),
    ],
)
def test_bad_strategies_are_refused(raw: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_strategy(raw)
    assert complaint.replace(">=", "greater than or equal") in str(error.value)


def test_promote_refuses_a_bad_strategy_with_the_one_error_shape(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    body = {"strategy": {"type": "canary", "steps": [{"weight": 60}, {"weight": 30}]}}
    error = assert_error(
        promote(client, deployment, version_id, "k1", body), 422, "validation_error"
    )
    problem = error["details"]["errors"][0]
    assert problem["loc"][:3] == ["body", "strategy", "canary"]
    assert "strictly increase" in problem["msg"]
    body = {"strategy": {"type": "canary", "steps": [{"weight": 150}]}}
    error = assert_error(
        promote(client, deployment, version_id, "k2", body), 422, "validation_error"
    )
    assert error["details"]["errors"][0]["loc"][-1] == "weight"
    body = {"strategy": {"type": "rolling"}}
    assert_error(promote(client, deployment, version_id, "k3", body), 422, "validation_error")


def test_promote_stores_the_validated_strategy_with_its_defaults(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    body = {"strategy": {"type": "canary", "steps": [{"weight": 10}]}}
    answer = accepted(promote(client, deployment, version_id, "k1", body))
    stored = answer["release"]["rollout"]["strategy"]
    assert stored["type"] == "canary" and stored["steps"] == [{"weight": 10, "pause_seconds": 60}]
    assert stored["analysis"] == CanaryAnalysis().model_dump()


def test_promote_without_strategy_uses_the_environment_policy(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    from sqlalchemy import select

    from shipway.catalog.models import Environment
    from shipway.db import transaction

    first = make_version(deployment["id"], "ready")
    accepted(promote(client, deployment, first, "k0"))  # creates the environment row
    with transaction() as session:
        env = session.scalars(
            select(Environment).where(Environment.deployment_id == deployment["id"])
        ).one()
        env.policy = {"strategy": ISSUE_EXAMPLE}
    version_id = make_version(deployment["id"], "ready")
    answer = accepted(promote(client, deployment, version_id, "k1"))
    assert answer["release"]["rollout"]["strategy"]["steps"][1]["weight"] == 50
    explicit = make_version(deployment["id"], "ready")
    body = {"strategy": {"type": "all_at_once"}}
    answer = accepted(promote(client, deployment, explicit, "k2", body))
    assert answer["release"]["rollout"]["strategy"] == {"type": "all_at_once"}


# --------------------------------------------------------------------------- analysis


def test_deltas_sum_the_canary_servers_and_treat_a_decrease_as_a_reset() -> None:
    before = snapshot(
        [stats("sw-c-0", 100, 1), stats("sw-c-1", 80), stats("sw-s-0", 900)], prefix="sw-c-"
    )
    assert set(before) == {"sw-c-0", "sw-c-1"}
    after = snapshot([stats("sw-c-0", 160, 4), stats("sw-c-1", 30, 2)], prefix="sw-c-")
    measured = delta(before, after)
    # c-0: +60 requests, +3 errors; c-1 went down (HAProxy reload): its 30 / 2 since the reload
    assert (measured.requests, measured.errors_5xx) == (90, 5)
    assert measured.reset_servers == ("sw-c-1",)
    assert delta({}, after).requests == 190  # a server new in the interval counts from zero
    assert delta(after, after) == Delta(0, 0, None, ())


def test_requests_fall_back_to_responses_when_req_tot_is_missing() -> None:
    row = stats("sw-c-0", 10, 2)
    without = ServerStats(**{**row.__dict__, "req_tot": 0})
    assert Counters.of(without).requests == 10


RULES = CanaryAnalysis(min_requests=50, max_error_rate=0.01, failure_limit=2)


def test_too_few_requests_is_inconclusive_never_a_pass() -> None:
    assert judge(Delta(0, 0, None, ()), RULES)[0] == "inconclusive"
    verdict, reasons = judge(Delta(49, 0, 3.0, ()), RULES)
    assert verdict == "inconclusive" and "49 canary requests < min_requests 50" in reasons[0]
    assert judge(Delta(50, 0, 3.0, ()), RULES) == ("pass", [])


def test_error_rate_and_latency_thresholds() -> None:
    assert judge(Delta(100, 1, 1.0, ()), RULES)[0] == "pass"  # 0.01 is not above 0.01
    verdict, reasons = judge(Delta(100, 2, 1.0, ()), RULES)
    assert verdict == "fail" and reasons == ["error rate 0.0200 > max_error_rate 0.01"]
    slow = CanaryAnalysis(min_requests=1, max_p95_latency_ms=200)
    assert judge(Delta(10, 0, 150.0, ()), slow)[0] == "pass"
    verdict, reasons = judge(Delta(10, 0, 250.0, ()), slow)
    assert verdict == "fail" and "average latency 250.0 ms > max_p95_latency_ms 200" in reasons[0]


def test_interval_result_has_the_documented_fields() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = interval_result(
        at=at,
        step_index=1,
        weight=50,
        canary=Delta(100, 5, 12.5, ("sw-c-0",)),
        stable=Delta(100, 0, 10.0, ()),
        rules=RULES,
    )
    assert result["at"] == "2026-01-02T03:04:05Z"
    assert result["verdict"] == "fail" and result["error_rate"] == 0.05
    assert result["observed_share"] == 0.5 and result["counter_resets"] == ["sw-c-0"]
    for name in ("step_index", "weight", "requests", "errors_5xx", "avg_latency_ms", "reasons"):
        assert name in result
    kept: list[dict[str, Any]] = []
    for i in range(60):
        kept = keep_last(kept, {"i": i})
    assert len(kept) == 50 and kept[0]["i"] == 10


def test_diagnostics_hold_thresholds_and_each_interval() -> None:
    analyses = [{"verdict": "fail", "error_rate": 0.3}, {"verdict": "fail", "error_rate": 0.4}]
    diagnostics = failure_diagnostics(
        rules=RULES,
        analyses=analyses,
        cause="thresholds",
        release_id="rel_c",
        stable_release_id="rel_s",
    )
    assert set(diagnostics) == {"title", "description", "action", "evidence"}
    assert "rel_s kept serving" in diagnostics["action"]
    assert diagnostics["evidence"]["thresholds"]["max_error_rate"] == 0.01
    assert diagnostics["evidence"]["intervals"] == analyses
    assert diagnostics["evidence"]["failed_intervals"] == 2


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("stable_n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("canary_n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("percent", [1, 5, 10, 25, 33, 50, 75, 90, 99])
def test_server_weights_give_the_requested_share(
    stable_n: int, canary_n: int, percent: int
) -> None:
    weights = server_weights(percent, stable_servers=stable_n, canary_servers=canary_n)
    assert all(0 < w <= 256 for w in weights)
    ratio = (100 - percent) * canary_n / (percent * stable_n)  # stable / canary weight
    if 1 / 256 <= ratio <= 256:
        assert share(weights, stable_n, canary_n) == pytest.approx(percent / 100, abs=0.005)
    else:  # beyond what weights 1..256 can express: the closest extreme
        assert weights == ((256, 1) if ratio > 256 else (1, 256))


def test_server_weights_edges() -> None:
    assert server_weights(10, stable_servers=2, canary_servers=2) == (180, 20)
    assert server_weights(0, stable_servers=2, canary_servers=2) == (100, 0)
    assert server_weights(100, stable_servers=2, canary_servers=2) == (0, 100)
    with pytest.raises(ValueError):
        server_weights(101, stable_servers=1, canary_servers=1)


# --------------------------------------------------------------------------- control API


def test_control_refuses_a_job_that_is_not_a_canary(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"], "ready")
    job = accepted(promote(client, deployment, version_id, "k1"))["job"]
    for action in ("pause", "resume", "promote-now", "abort"):
        response = client.post(
            f"/api/v1/jobs/{job['id']}/{action}", headers=auth(deployment["token"])
        )
        assert_error(response, 409, "job_not_canary")
    missing = client.post("/api/v1/jobs/job_nope/pause", headers=auth(deployment["token"]))
    assert_error(missing, 404, "not_found")


def test_control_of_a_queued_canary_is_recorded_and_audited(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    make_token: Any,
) -> None:
    version_id = make_version(deployment["id"], "ready")
    body = {"strategy": {"type": "canary", "steps": [{"weight": 10}]}}
    job = accepted(promote(client, deployment, version_id, "k1", body))["job"]
    url = f"/api/v1/jobs/{job['id']}"
    headers = auth(deployment["token"])
    reader = make_token("deployments:read")
    assert_error(client.post(f"{url}/pause", headers=auth(reader)), 403, "insufficient_scope")
    other = make_token("deployments:write", workspace="other")
    assert_error(client.post(f"{url}/pause", headers=auth(other)), 404, "not_found")

    paused = client.post(f"{url}/pause", headers=headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True and paused.json()["state"] == "queued"
    resumed = client.post(f"{url}/resume", headers=headers).json()
    assert resumed["paused"] is False
    now = client.post(f"{url}/promote-now", headers=headers).json()
    assert now["control_request"] == "promote_now"
    aborted = client.post(f"{url}/abort", headers=headers).json()
    assert aborted["state"] == "cancelled" and aborted["failure_reason"] == "canary_aborted"
    assert_error(client.post(f"{url}/pause", headers=headers), 409, "job_not_running")

    audit = client.get(f"{url}/audit", headers=headers).json()
    requested = [e["to_state"] for e in audit if e["subject_type"] == "canary"]
    assert requested == ["pause_requested", "resume_requested", "promote_now_requested"]
    assert all(e["actor"] for e in audit)
    cancelled = [e for e in audit if e["subject_type"] == "job" and e["to_state"] == "cancelled"]
    assert cancelled and "canary aborted by" in cancelled[0]["reason"]
    versions = client.get(f"/api/v1/versions/{version_id}", headers=headers).json()
    assert versions["status"] == "FAILED" and versions["failure_reason"] == "canary_aborted"


def test_reconciliation_restores_the_recorded_canary_weights() -> None:
    from shipway.catalog.models import Release
    from shipway.releases.traffic import restored_weights
    from shipway.router.base import Server

    servers = [
        Server("sw-rel_s-0", "127.0.0.1", 20001),
        Server("sw-rel_s-1", "127.0.0.1", 20002),
        Server("sw-rel_c-0", "127.0.0.1", 20003, state="maint"),
        Server("sw-rel_old-0", "127.0.0.1", 20004, state="drain"),
    ]
    canary = Release(id="rel_c", rollout={"canary": {"state": "analysing", "weight": 10}})
    weights = {s.name: (s.weight, s.state) for s in restored_weights(servers, release=canary)}
    assert weights == {
        "sw-rel_s-0": (90, "ready"),
        "sw-rel_s-1": (90, "ready"),
        "sw-rel_c-0": (20, "ready"),  # 1 canary server vs 2 stable: 20 / (20 + 180) = 10 %
        "sw-rel_old-0": (100, "drain"),
    }
    done = Release(id="rel_c", rollout={"canary": {"state": "completed", "weight": 100}})
    assert restored_weights(servers, release=done) == servers
