"""The web dashboard in headless Chromium against a real ``shipway api`` process.

Data is seeded straight into the test's PostgreSQL database (as the operator-view
tests do); the browser reads it through the JSON API with a token, like a user.
Screenshots of each view go to ``.scratch/screenshots/``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from shipway.catalog.machines import VERSION
from shipway.catalog.models import Environment, Release
from shipway.db import transaction
from shipway.ids import new_id, utcnow
from shipway.jobs import lines, queueing
from shipway.sources.store import source_store
from shipway.states import transition
from tests.e2e.conftest import Api, Stack
from tests.e2e.helpers import api_token, get_job, workspace_id
from tests.support import seed
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".scratch" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if CHROMIUM is None or not os.access(CHROMEDRIVER, os.X_OK):
    pytest.skip(
        "headless Chromium tests need Debian's chromium and chromium-driver "
        "(scripts/provision.sh installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) missing")

from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

CANARY_STRATEGY = {
    "type": "canary",
    "steps": [{"weight": 10, "pause_seconds": 30}, {"weight": 25}, {"weight": 50}],
    "analysis": {"interval_seconds": 5, "min_requests": 20, "max_error_rate": 0.01},
}


# --------------------------------------------------------------------------- browser


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium driven by Debian's chromedriver (selenium-manager never runs)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def by_testid(driver: WebDriver | WebElement, testid: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def wait_for(
    driver: WebDriver, probe: Callable[[], Any], *, timeout: float = 20, what: str = ""
) -> Any:
    """Poll ``probe`` (DOM lookups that may not exist yet) until it returns something truthy."""

    def attempt() -> Any:
        with contextlib.suppress(NoSuchElementException, StaleElementReferenceException):
            return probe()
        return None

    return wait_until(
        attempt,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"{what}\nconsole: {console(driver)}\npage:\n{page_text(driver)}",
    )


def text_of(driver: WebDriver | WebElement, testid: str) -> str:
    """The text of an element; looked up again if a refresh replaced it meanwhile."""
    for _ in range(20):
        with contextlib.suppress(StaleElementReferenceException):
            return str(by_testid(driver, testid).text)
    raise AssertionError(f"{testid} kept being replaced")


def click(driver: WebDriver, testid: str) -> None:
    """Click an element (looked up again if a refresh replaced it meanwhile)."""

    def clicked() -> bool:
        by_testid(driver, testid).click()
        return True

    wait_for(driver, clicked, what=f"click {testid}")


def page_text(driver: WebDriver) -> str:
    with contextlib.suppress(Exception):
        return str(driver.find_element(By.TAG_NAME, "main").text)[:3000]
    return ""


def console(driver: WebDriver) -> list[str]:
    """Browser console messages so far (each read once)."""
    # Chrome's driver has get_log; selenium's WebDriver base type does not declare it.
    return [entry["message"] for entry in driver.get_log("browser")]  # type: ignore[attr-defined]


def assert_no_script_errors(driver: WebDriver) -> None:
    errors = [m for m in console(driver) if "Uncaught" in m or "TypeError" in m]
    assert errors == [], errors


def screenshot(driver: WebDriver, name: str) -> Path:
    """A PNG of the whole page, beyond the window (Chrome DevTools' full-page capture)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000)}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG", path
    return path


def open_dashboard(driver: WebDriver, api: Api, token: str, view: str = "/queue") -> None:
    """Open ``/dashboard#token=...&view=...`` as the demo's printed link does."""
    driver.get(f"{api.base_url}/dashboard#token={token}&view={view}")
    wait_for(driver, lambda: "#token" not in driver.current_url, what="token left in the URL")


def go(driver: WebDriver, view: str) -> None:
    """Navigate inside the single-page app (no page load)."""
    driver.execute_script("location.hash = arguments[0]", view)


def mark_page(driver: WebDriver) -> None:
    """Put a marker on the window: it survives in-page updates but not a reload."""
    driver.execute_script("window.__noReload = 'still here'")


def assert_not_reloaded(driver: WebDriver) -> None:
    assert driver.execute_script("return window.__noReload") == "still here"


# --------------------------------------------------------------------------- seed data


def create_deployment(api: Api, token: str, name: str) -> dict[str, Any]:
    with api.client(token) as client:
        response = client.post(
            "/api/v1/deployments",
            json={"name": name, "kind": "static", "replicas": 2, "environments": ["production"]},
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


def make_version(deployment_id: str, path: list[str], **values: Any) -> str:
    """A version walked through ``path`` (e.g. building, ready); ``values`` set on the last."""
    from shipway.catalog.models import Deployment
    from shipway.versions.service import create_version

    with transaction() as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        version = create_version(
            session,
            deployment=deployment,
            actor="test",
            source_sha256=secrets.token_hex(32),
            provenance={"git_branch": "main", "git_message": "dashboard test"},
        )
        current = "created"
        for index, step in enumerate(path):
            last = index == len(path) - 1
            transition(
                session,
                VERSION,
                subject_id=version.id,
                from_state=current,
                to_state=step,
                actor="test",
                values=values if last else {},
            )
            current = step
        return version.id


def make_release(
    workspace: str,
    deployment_id: str,
    version_id: str,
    status: str,
    *,
    replicas: int = 2,
    active: bool = False,
    rollout: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> str:
    with transaction() as session:
        release = Release(
            id=new_id("rel"),
            workspace_id=workspace,
            deployment_id=deployment_id,
            version_id=version_id,
            environment="production",
            status=status,
            replicas=replicas,
            deployed_at=utcnow() if status == "ACTIVE" else None,
            rollback_count=0,
            rollout=rollout or {},
            job_id=job_id,
        )
        session.add(release)
        session.flush()
        if active:
            session.execute(
                update(Environment)
                .where(
                    Environment.deployment_id == deployment_id,
                    Environment.name == "production",
                )
                .values(active_release_id=release.id)
            )
        return release.id


def make_failed_certificate(workspace: str, deployment_id: str, hostname: str) -> None:
    """A custom domain of production whose ACME issuance failed (as renewal.py records it)."""
    from sqlalchemy import select

    from shipway.domains.models import Certificate, Domain

    with transaction() as session:
        environment_id = session.scalars(
            select(Environment.id).where(
                Environment.deployment_id == deployment_id, Environment.name == "production"
            )
        ).one()
        session.add(
            Domain(
                hostname=hostname,
                workspace_id=workspace,
                deployment_id=deployment_id,
                environment_id=environment_id,
                kind="custom",
                created_by="test",
                created_at=utcnow(),
            )
        )
        session.add(
            Certificate(
                hostname=hostname,
                workspace_id=workspace,
                source="acme",
                status="failed",
                attempts=2,
                next_attempt_at=utcnow(),
                failure_reason="acme_challenge_failed",
                failure_diagnostics={
                    "title": "The CA could not validate the domain",
                    "description": "no answer on port 80",
                    "action": "Point the domain's DNS at the router",
                },
            )
        )


@contextlib.contextmanager
def heartbeating(worker_id: str) -> Iterator[None]:
    """Heartbeat a seeded worker row every half second, as a live worker does."""
    from shipway.workers_registry.service import heartbeat

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.5):
            with transaction() as session:
                heartbeat(session, worker_id=worker_id, current_job_id=None)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def canary_state(weight: int, step_index: int, analyses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "state": "analysing",
        "step_index": step_index,
        "step_count": 3,
        "weight": weight,
        "paused": False,
        "last_analysis": analyses[-1] if analyses else None,
        "analyses": analyses,
    }


def analysis(
    step_index: int, weight: int, requests: int, errors: int, verdict: str
) -> dict[str, Any]:
    return {
        "at": utcnow().isoformat().replace("+00:00", "Z"),
        "step_index": step_index,
        "weight": weight,
        "requests": requests,
        "errors_5xx": errors,
        "error_rate": errors / requests if requests else 0.0,
        "avg_latency_ms": 12.5,
        "verdict": verdict,
        "reasons": [] if verdict == "pass" else [f"error rate {errors / requests:.3f} > 0.01"],
    }


# --------------------------------------------------------------------------- tests


def test_queue_view_shows_depth_workers_and_stuck_jobs(stack: Stack, browser: WebDriver) -> None:
    api = stack.start_api()
    token = api_token("admin")
    workspace = workspace_id()

    queued = [seed.enqueue(workspace, params={"seconds": 60}) for _ in range(3)]
    stuck = seed.enqueue(workspace)
    owner = seed.start(stuck, seed.owner("host-gone", 777))
    seed.phase(stuck, owner, "sleep", step=1)
    seed.set_columns(stuck, lease_expires_at=seed.ago(30), heartbeat_at=seed.ago(35))
    seed.worker("host-gone", 777, heartbeat_age=600, current_job_id=stuck)
    alive = seed.worker("host-ok", 4242, heartbeat_age=0.2)
    seed.ended(workspace, "failed", failure_reason="health_check_failed")
    shop = create_deployment(api, token, "shop")
    make_failed_certificate(workspace, shop["id"], "www.shop.test")

    with heartbeating(alive):  # alive however slowly the page loads on a busy machine
        open_dashboard(browser, api, token)
        assert browser.execute_script("return localStorage.getItem('shipway.token')") == token
        check_queue_view(browser, workspace, queued, stuck)


def check_queue_view(browser: WebDriver, workspace: str, queued: list[str], stuck: str) -> None:
    depth = wait_for(browser, lambda: text_of(browser, "queue-depth-rollouts"), what="depth")
    assert depth == str(len(queued))

    row = wait_for(browser, lambda: by_testid(browser, f"stuck-{stuck}"), what="stuck row")
    assert "stuck" in (row.get_attribute("class") or "")
    assert text_of(row, "stuck-reason") == "lease_expired"
    background = row.find_element(By.TAG_NAME, "td").value_of_css_property("background-color")
    assert background == "rgba(253, 236, 236, 1)", background  # --bad-bg: highlighted in red
    running = by_testid(browser, f"running-{stuck}")
    assert "stuck" in (running.get_attribute("class") or "")

    storage = by_testid(browser, "storage")  # the data directory's free space (docs/storage.md)
    assert storage.get_attribute("data-state") == "ok" and "MiB" in storage.text, storage.text

    workers = by_testid(browser, "workers-table").text
    assert "host-gone/777" in workers and "host-ok/4242" in workers
    assert "dead" in workers and "alive" in workers
    assert "health_check_failed" in text_of(browser, "failures-table")
    certificate = by_testid(browser, "certificate-www.shop.test")
    assert "bad" in (certificate.get_attribute("class") or "")
    for shown in ("failed", "acme_challenge_failed", "Point the domain's DNS at the router"):
        assert shown in certificate.text, certificate.text
    # The deployment is named by its name, not its id (looked up once, id in the tooltip).
    wait_for(
        browser,
        lambda: "shop / production" in text_of(browser, "certificates-table"),
        what="deployment name in the certificates table",
    )
    screenshot(browser, "queue")

    # The view polls: a new queued job shows up without a reload.
    mark_page(browser)
    seed.enqueue(workspace)
    wait_for(
        browser,
        lambda: text_of(browser, "queue-depth-rollouts") == str(len(queued) + 1),
        what="depth after one more job",
    )
    assert_not_reloaded(browser)

    # Jobs list and failures views load too.
    go(browser, "#/jobs")
    wait_for(browser, lambda: by_testid(browser, f"job-{stuck}"), what="jobs list")
    go(browser, "#/failures")
    wait_for(browser, lambda: "health_check_failed" in text_of(browser, "failures-list"))
    screenshot(browser, "failures")
    assert_no_script_errors(browser)


def test_job_page_timeline_updates_live_and_cancel_button_cancels(
    stack: Stack, browser: WebDriver
) -> None:
    api = stack.start_api()
    token = api_token("deployments:write")
    workspace = workspace_id()

    job_id = seed.enqueue(workspace)
    owner = seed.start(job_id)
    seed.phase(job_id, owner, "scale", replicas=2)
    seed.phase(job_id, owner, "health_check", healthy=0)

    open_dashboard(browser, api, token, f"/jobs/{job_id}")
    wait_for(browser, lambda: by_testid(browser, "phase-health_check"), what="timeline")
    # A live update may replace the rows between a lookup and a read: looked up again.
    wait_for(browser, lambda: by_testid(browser, "phase-scale").is_displayed(), what="scale row")
    assert text_of(browser, "job-state") == "running"
    assert text_of(browser, "job-phase") == "health_check"
    wait_for(
        browser,
        lambda: browser.find_element(By.TAG_NAME, "section").get_attribute("data-stream") == "live",
        what="stream connected",
    )

    # A worker moves on: the page follows the event stream, no reload.
    mark_page(browser)
    seed.progress(job_id, owner, healthy=1)
    wait_for(browser, lambda: '"healthy": 1' in text_of(browser, "job-progress"), what="progress")
    seed.phase(job_id, owner, "switch", weight=100)
    wait_for(browser, lambda: by_testid(browser, "phase-switch"), what="new phase row")
    wait_for(browser, lambda: text_of(browser, "job-phase") == "switch", what="phase text")
    wait_for(browser, lambda: "(now)" in text_of(browser, "phase-switch"), what="current phase")
    seed.finish(job_id, owner, "succeeded")
    wait_for(browser, lambda: text_of(browser, "job-state") == "succeeded", what="end state")
    wait_for(
        browser,
        lambda: "running → succeeded" in text_of(browser, "job-events-table"),
        what="the final transition in the events table",
    )
    assert_not_reloaded(browser)
    assert "queued → running" in text_of(browser, "job-events-table")
    with pytest.raises(NoSuchElementException):
        by_testid(browser, "cancel-button")  # an ended job offers no cancel
    screenshot(browser, "job-timeline")

    # Cancel a queued job from its page.
    queued = seed.enqueue(workspace)
    go(browser, f"#/jobs/{queued}")
    wait_for(browser, lambda: by_testid(browser, "cancel-button"), what="cancel button")
    assert text_of(browser, "job-state") == "queued"
    with pytest.raises(NoSuchElementException):
        by_testid(browser, "abort-button")  # not a rollout
    click(browser, "cancel-button")
    alert = wait_for(browser, lambda: _alert(browser), what="confirm dialog")
    alert.accept()
    with api.client(token) as client:
        wait_until(
            lambda: client.get(f"/api/v1/jobs/{queued}").json()["state"] == "cancelled",
            timeout=20,
            message="the API never reported the job cancelled",
        )
    wait_for(browser, lambda: text_of(browser, "job-state") == "cancelled", what="cancelled")
    assert get_job(queued).failure_reason == "cancelled"
    assert "cancelled" in text_of(browser, "job-diagnostics")
    screenshot(browser, "job-cancelled")
    assert_no_script_errors(browser)


def _alert(driver: WebDriver) -> Any:
    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def test_deployment_version_and_rollout_pages(stack: Stack, browser: WebDriver) -> None:
    api = stack.start_api()
    token = api_token("deployments:write")
    workspace = workspace_id()
    deployment = create_deployment(api, token, "dashboard-site")
    dep = deployment["id"]

    ready = {
        "artifact_sha256": "sha256:" + secrets.token_hex(32),
        "runtime_image": "shipway/busybox:local",
        "runtime_port": 8080,
    }
    v1 = make_version(dep, ["building", "ready"], **ready)
    make_release(workspace, dep, v1, "ACTIVE", replicas=2, active=True)
    diagnosis = {
        "title": "The build command failed",
        "description": "RUN make exited with status 2 while building the image.",
        "action": "Fix the build error shown in the log, then publish again.",
        "evidence": {"exit_code": 2, "last_lines": ["make: *** [all] Error 2"]},
    }
    v2 = make_version(
        dep,
        ["building", "failed"],
        failure_reason="build_failed",
        failure_diagnostics=diagnosis,
    )
    log = source_store().build_log(v2)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Step 1/3 : FROM shipway/busybox:local\nmake: *** [all] Error 2\n")
    v3 = make_version(
        dep, ["building", "ready"], **{**ready, "artifact_sha256": "sha256:" + "b" * 64}
    )

    # A canary rollout of v3 in progress: the release's rollout and the job's progress.
    analyses = [analysis(0, 10, 120, 0, "pass")]
    with transaction() as session:
        job = queueing.enqueue(
            session,
            workspace_id=workspace,
            kind="promote",
            actor="test",
            params={"strategy": CANARY_STRATEGY},
            deployment_id=dep,
            environment="production",
            version_id=v3,
            serial_key=lines.serial_key_for(dep, "production"),
        )
        rollout_job = job.id
    release = make_release(
        workspace,
        dep,
        v3,
        "DEPLOYING",
        rollout={"strategy": CANARY_STRATEGY, "canary": canary_state(10, 0, analyses)},
        job_id=rollout_job,
    )
    seed.set_columns(rollout_job, release_id=release)
    owner = seed.start(rollout_job)
    seed.phase(rollout_job, owner, "canary", canary=canary_state(10, 0, analyses))

    # The deployment: production's active version, release status and replicas.
    open_dashboard(browser, api, token, f"/deployments/{dep}")
    row = wait_for(browser, lambda: by_testid(browser, "env-production"), what="environments")
    assert text_of(row, "active-version").startswith("v1")
    assert text_of(row, "release-status") == "ACTIVE"
    assert text_of(row, "replicas") == "2"
    versions = text_of(browser, "versions-table")
    assert all(f"v{n}" in versions for n in (1, 2, 3))
    wait_for(browser, lambda: by_testid(browser, f"rollout-{rollout_job}"), what="rollout card")
    screenshot(browser, "deployment")

    # A failed version: its build log and the failure's title, description and action.
    go(browser, f"#/deployments/{dep}/versions/{v2}")
    wait_for(browser, lambda: "Error 2" in text_of(browser, "build-log"), what="build log")
    diagnostics = by_testid(browser, "build-diagnostics")
    assert text_of(diagnostics, "failure-title") == diagnosis["title"]
    assert text_of(diagnostics, "failure-description") == diagnosis["description"]
    assert text_of(diagnostics, "failure-action") == diagnosis["action"]
    assert text_of(diagnostics, "failure-reason") == "build_failed"
    assert text_of(browser, "version-state") == "failed"
    screenshot(browser, "version-failed")

    # The rollout's job page: canary weight and analysis results, updating live.
    go(browser, f"#/jobs/{rollout_job}")
    panel = wait_for(browser, lambda: by_testid(browser, "rollout-panel"), what="rollout panel")
    assert text_of(panel, "canary-weight") == "10%"
    assert text_of(panel, "canary-step") == "1 of 3"
    assert by_testid(panel, "canary-weightbar").get_attribute("data-weight") == "10"
    assert "120" in text_of(panel, "canary-analyses")
    for control in ("pause-button", "promote-now-button", "abort-button", "cancel-button"):
        assert by_testid(browser, control).is_displayed(), control
    wait_for(
        browser,
        lambda: browser.find_element(By.TAG_NAME, "section").get_attribute("data-stream") == "live",
        what="stream connected",
    )

    mark_page(browser)
    analyses.append(analysis(1, 25, 240, 9, "fail"))
    seed.progress(rollout_job, owner, canary=canary_state(25, 1, analyses))
    wait_for(
        browser,
        lambda: (
            text_of(browser, "canary-weight") == "25%"
            and text_of(browser, "canary-step") == "2 of 3"
            and "fail" in text_of(browser, "canary-analyses")
        ),
        what="canary advanced to 25% with a failing analysis",
    )
    bar = by_testid(browser, "canary-bar")
    width = float(browser.execute_script("return arguments[0].getBoundingClientRect().width", bar))
    total = float(
        browser.execute_script(
            "return arguments[0].getBoundingClientRect().width",
            by_testid(browser, "canary-weightbar"),
        )
    )
    assert 0.2 < width / total < 0.3, (width, total)
    assert_not_reloaded(browser)
    screenshot(browser, "rollout-canary")

    # The queue view shows the same rollout, canary included.
    go(browser, "#/queue")
    card = wait_for(browser, lambda: by_testid(browser, f"rollout-{rollout_job}"), what="card")
    assert text_of(card, "canary-weight") == "25%"
    assert_no_script_errors(browser)
