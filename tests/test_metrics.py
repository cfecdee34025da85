"""GET /metrics: Prometheus text read from the database, parsed with prometheus_client."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.db import transaction
from shipway.events.models import Event
from shipway.ids import new_id, utcnow
from shipway.metrics import collector
from tests.conftest import TokenFactory, VersionFactory, auth
from tests.support import seed
from tests.test_api_auth import assert_error

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus-alerts.yml"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def families(client: TestClient) -> dict[str, Any]:
    text = client.get("/metrics").text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_exposes_every_metric_with_its_type(client: TestClient, make_token: TokenFactory) -> None:
    make_token()
    every = families(client)
    found = {name: family.type for name, family in every.items() if name.startswith("shipway_")}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(every)
    assert found == {
        "shipway_jobs": "counter",
        "shipway_jobs_current": "gauge",
        "shipway_job_duration_seconds": "histogram",
        "shipway_job_phase_duration_seconds": "histogram",
        "shipway_build_failures": "counter",
        "shipway_queue_depth": "gauge",
        "shipway_queue_oldest_age_seconds": "gauge",
        "shipway_workers_alive": "gauge",
        "shipway_stuck_jobs": "gauge",
        "shipway_releases": "gauge",
        "shipway_rollbacks": "counter",
        "shipway_canary_aborts": "counter",
        "shipway_certificate_expiry_timestamp_seconds": "gauge",
        "shipway_certificates": "gauge",
        "shipway_certificate_failures": "gauge",
        "shipway_http_requests": "counter",
        "shipway_http_request_duration_seconds": "histogram",
        "shipway_webhook_deliveries": "gauge",
        "shipway_webhook_attempts": "counter",
        "shipway_data_dir_free_bytes": "gauge",
        "shipway_data_dir_size_bytes": "gauge",
        "shipway_data_dir_min_free_bytes": "gauge",
        "shipway_storage_exhausted": "counter",
    }


def test_http_requests_are_counted_by_route_template_and_status(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token()
    route = "/api/v1/deployments/{deployment_id}"
    before = scrape(client)
    for _ in range(3):
        assert client.get("/api/v1/deployments/dep_nope", headers=auth(token)).status_code == 404
    assert client.get("/no/such/page").status_code == 404

    after = scrape(client)

    def grown(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grown("shipway_http_requests_total", method="GET", route=route, status="404") == 3
    assert grown("shipway_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert grown("shipway_http_request_duration_seconds_count", method="GET", route=route) == 3
    assert not any("dep_nope" in str(labels) for _, labels in after)  # templates, not paths


def test_empty_database_reports_zeros(client: TestClient, make_token: TokenFactory) -> None:
    make_token()
    samples = scrape(client)
    assert value(samples, "shipway_jobs_total", kind="promote", state="failed") == 0
    assert value(samples, "shipway_queue_depth", queue="builds") == 0
    assert value(samples, "shipway_queue_oldest_age_seconds", queue="rollouts") == 0
    assert value(samples, "shipway_workers_alive") == 0
    assert value(samples, "shipway_stuck_jobs", reason="lease_expired") == 0
    assert value(samples, "shipway_releases", status="ACTIVE") == 0
    assert value(samples, "shipway_rollbacks_total") == 0
    assert value(samples, "shipway_canary_aborts_total") == 0


def finished_at(job_id: str, *, started: float, took: float) -> None:
    """Start the job ``started`` seconds ago and end it ``took`` seconds later."""
    start = utcnow() - timedelta(seconds=started)
    seed.set_columns(job_id, started_at=start, finished_at=start + timedelta(seconds=took))


def test_jobs_queues_workers_and_stuck_jobs(client: TestClient, make_token: TokenFactory) -> None:
    ws = make_token()["workspace_id"]
    other_ws = make_token(workspace="other")["workspace_id"]  # metrics are fleet-wide
    for seconds in (0.3, 3.0):
        finished_at(seed.ended(ws), started=60, took=seconds)
    finished_at(seed.ended(other_ws), started=60, took=45.0)
    seed.ended(ws, "failed", kind="publish", failure_reason="build_failed")
    seed.ended(other_ws, "failed", kind="publish", failure_reason="build_failed")
    seed.ended(ws, "failed", kind="publish", failure_reason="build_timeout")
    seed.ended(ws, "failed", failure_reason="worker_lost")
    seed.ended(ws, "cancelled", kind="promote", failure_reason="cancelled")
    oldest = seed.enqueue(ws)
    seed.set_columns(oldest, created_at=seed.ago(100))
    seed.enqueue(other_ws)
    seed.enqueue(ws, kind="publish")
    seed.enqueue(ws, not_before=utcnow() + timedelta(hours=1))  # delayed: not in depth
    lost = seed.enqueue(ws)
    seed.start(lost)
    seed.set_columns(lost, lease_expires_at=seed.ago(1))
    seed.start(seed.enqueue(ws, kind="publish"))
    seed.worker("a", 1)
    seed.worker("b", 2)
    seed.worker("c", 3, heartbeat_age=3600)

    samples = scrape(client)
    assert value(samples, "shipway_jobs_total", kind="noop", state="succeeded") == 3
    assert value(samples, "shipway_jobs_total", kind="publish", state="failed") == 3
    assert value(samples, "shipway_jobs_total", kind="noop", state="failed") == 1
    assert value(samples, "shipway_jobs_total", kind="promote", state="cancelled") == 1
    assert value(samples, "shipway_jobs_total", kind="publish", state="succeeded") == 0
    assert value(samples, "shipway_jobs_current", kind="noop", state="queued") == 3
    assert value(samples, "shipway_jobs_current", kind="noop", state="running") == 1
    assert value(samples, "shipway_jobs_current", kind="publish", state="running") == 1
    assert value(samples, "shipway_build_failures_total", reason="build_failed") == 2
    assert value(samples, "shipway_build_failures_total", reason="build_timeout") == 1
    assert ("shipway_build_failures_total", (("reason", "worker_lost"),)) not in samples

    assert value(samples, "shipway_queue_depth", queue="rollouts") == 2
    assert value(samples, "shipway_queue_depth", queue="builds") == 1
    assert 100 <= value(samples, "shipway_queue_oldest_age_seconds", queue="rollouts") < 700
    assert value(samples, "shipway_workers_alive") == 2
    assert value(samples, "shipway_stuck_jobs", reason="lease_expired") == 1
    assert value(samples, "shipway_stuck_jobs", reason="queued_too_long") == 0

    # Durations of noop jobs: 0.3 s, 3 s, 45 s, and the failed one's few milliseconds.
    noop = {"kind": "noop"}
    assert value(samples, "shipway_job_duration_seconds_bucket", le="0.1", **noop) == 1
    assert value(samples, "shipway_job_duration_seconds_bucket", le="0.5", **noop) == 2
    assert value(samples, "shipway_job_duration_seconds_bucket", le="5", **noop) == 3
    assert value(samples, "shipway_job_duration_seconds_bucket", le="30", **noop) == 3
    assert value(samples, "shipway_job_duration_seconds_bucket", le="60", **noop) == 4
    assert value(samples, "shipway_job_duration_seconds_bucket", le="+Inf", **noop) == 4
    assert value(samples, "shipway_job_duration_seconds_count", **noop) == 4
    assert value(samples, "shipway_job_duration_seconds_sum", **noop) == pytest.approx(
        48.3, abs=0.5
    )


def test_phase_durations_from_events(client: TestClient, make_token: TokenFactory) -> None:
    ws = make_token()["workspace_id"]
    job_id = seed.enqueue(ws, kind="promote")
    owner = seed.start(job_id)
    seed.phase(job_id, owner, "scale")
    seed.phase(job_id, owner, "health_check")
    seed.finish(job_id, owner)
    unfinished = seed.enqueue(ws, kind="promote")
    seed.phase(unfinished, seed.start(unfinished), "scale")  # still running: not counted
    start = utcnow() - timedelta(seconds=100)
    # Phases lasted 2 s (scale) and 20 s (health_check, until the job ended).
    with transaction() as session:
        rows = session.query(Event).filter(Event.job_id == job_id).order_by(Event.id).all()
        offsets = {"running": 0.0, "scale": 1.0, "health_check": 3.0, "succeeded": 23.0}
        for event in rows:
            if event.to_state in offsets:
                event.created_at = start + timedelta(seconds=offsets[event.to_state])

    samples = scrape(client)
    scale = {"kind": "promote", "phase": "scale"}
    health = {"kind": "promote", "phase": "health_check"}
    assert value(samples, "shipway_job_phase_duration_seconds_count", **scale) == 1
    assert value(samples, "shipway_job_phase_duration_seconds_sum", **scale) == pytest.approx(
        2.0, abs=0.01
    )
    assert value(samples, "shipway_job_phase_duration_seconds_bucket", le="1", **scale) == 0
    assert value(samples, "shipway_job_phase_duration_seconds_bucket", le="5", **scale) == 1
    assert value(samples, "shipway_job_phase_duration_seconds_sum", **health) == pytest.approx(
        20.0, abs=0.01
    )
    assert value(samples, "shipway_job_phase_duration_seconds_bucket", le="15", **health) == 0
    assert value(samples, "shipway_job_phase_duration_seconds_bucket", le="30", **health) == 1


def test_counters_keep_counting_across_scrapes_without_double_counting(
    client: TestClient, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_token()["workspace_id"]
    seed.ended(ws)
    old = seed.ended(ws)
    seed.set_columns(old, finished_at=seed.ago(3600))

    def succeeded() -> float:
        return value(scrape(client), "shipway_jobs_total", kind="noop", state="succeeded")

    assert succeeded() == 2  # one kept (finished long ago), one fresh
    seed.ended(ws)
    assert succeeded() == 3  # the fresh window is read again on each scrape
    monkeypatch.setattr(collector, "SETTLE", timedelta(0))
    assert succeeded() == 3  # the fresh ones move into the kept totals once...
    assert succeeded() == 3  # ... and only once
    seed.ended(ws)
    assert succeeded() == 4


def test_releases_rollbacks_and_canary_aborts(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    version_id = make_version(deployment["id"])
    ws = deployment["token"]["workspace_id"]
    now = utcnow()
    statuses: list[tuple[str, dict[str, Any]]] = [
        ("ACTIVE", {}),
        ("RETIRED", {}),
        ("RETIRED", {"last_rollback_at": now}),
        ("ROLLED_BACK", {"rolled_back_at": now}),
        ("FAILED", {"failure_reason": "canary_analysis_failed"}),
        ("FAILED", {"failure_reason": "health_check_failed"}),
    ]
    with transaction() as session:
        for index, (status, extra) in enumerate(statuses):
            session.add(
                Release(
                    id=new_id("rel"),
                    workspace_id=ws,
                    deployment_id=deployment["id"],
                    version_id=version_id,
                    environment=f"env{index}",
                    status=status,
                    replicas=0,
                    rollback_count=1 if "last_rollback_at" in extra else 0,
                    rollout={},
                    **extra,
                )
            )

    samples = scrape(client)
    assert value(samples, "shipway_releases", status="ACTIVE") == 1
    assert value(samples, "shipway_releases", status="RETIRED") == 2
    assert value(samples, "shipway_releases", status="FAILED") == 2
    assert value(samples, "shipway_releases", status="DEPLOYING") == 0
    assert value(samples, "shipway_rollbacks_total") == 1
    assert value(samples, "shipway_canary_aborts_total") == 1


@pytest.fixture
def private_metrics(shipway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPWAY_METRICS_PUBLIC", "false")
    get_settings.cache_clear()


def test_private_metrics_need_an_admin_token(
    private_metrics: None, client: TestClient, make_token: TokenFactory
) -> None:
    assert_error(client.get("/metrics"), 401, "unauthenticated")
    assert_error(client.get("/metrics", headers=auth(make_token("deployments:write"))), 403)
    samples = scrape(client, auth(make_token("admin")))
    assert value(samples, "shipway_workers_alive") == 0


def test_openmetrics_when_asked(client: TestClient, make_token: TokenFactory) -> None:
    make_token()
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "shipway_workers_alive 0" in response.text


def test_metrics_are_public_by_default(client: TestClient, make_token: TokenFactory) -> None:
    make_token()
    assert get_settings().metrics_public is True
    assert client.get("/metrics").status_code == 200


def test_a_scrape_reads_jobs_through_indexes(client: TestClient, make_token: TokenFactory) -> None:
    from tests.test_queue_view import captured_statements, full_scans_of_jobs, seed_everything

    seed_everything(make_token()["workspace_id"])
    scrape(client)  # the first scrape reads all finished jobs once; later ones do not
    with captured_statements() as statements:
        scrape(client)
    job_queries = [(s, p) for s, p in statements if re.search(r"\bjobs\b", s)]
    assert len(job_queries) >= 8
    for statement, parameters in job_queries:
        assert full_scans_of_jobs(statement, parameters) == [], statement


def alert_rules() -> list[dict[str, Any]]:
    """The rules of deploy/prometheus-alerts.yml (with PyYAML if installed, else scanned)."""
    text = ALERTS.read_text()
    try:
        import yaml
    except ImportError:  # PyYAML is a dev extra; the file is simple enough to scan
        rules = []
        for block in re.split(r"\n\s*- alert: ", text)[1:]:
            name, _, body = block.partition("\n")
            expr = re.search(r"expr: (.*?)\n\s*(?:for|labels):", body, re.S)
            assert expr is not None, name
            keys = set(re.findall(r"^\s{8}([a-z]+):", body, re.M))
            rule: dict[str, Any] = {key: {} for key in keys}
            rules.append(rule | {"alert": name.strip(), "expr": expr.group(1)})
        return rules
    loaded = yaml.safe_load(text)
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_alert_rules_use_exposed_metrics(client: TestClient, make_token: TokenFactory) -> None:
    make_token()
    client.get("/healthz")  # a request answered: the per-route HTTP series exist
    exposed = set()
    for name, family in families(client).items():
        exposed |= {name, *(sample.name for sample in family.samples)}
    alerts = alert_rules()
    names = {rule["alert"] for rule in alerts}
    assert {
        "ShipwayQueueBacklogOld",
        "ShipwayStuckJobs",
        "ShipwayJobFailureRateHigh",
        "ShipwayNoWorkerAlive",
    } <= names
    for rule in alerts:
        assert {"expr", "labels", "annotations"} <= set(rule), rule["alert"]
        for metric in re.findall(r"\bshipway_[a-z_]+", rule["expr"]):
            assert metric in exposed, (rule["alert"], metric)
