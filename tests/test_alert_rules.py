"""deploy/prometheus-alerts.yml checked and unit-tested by Prometheus' own promtool.

The unit tests (deploy/prometheus-alerts.test.yml) scrape two API processes that report
the same fleet-wide values, as every API process does: an alert must count a failed job
once, whatever the number of API processes scraped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian's prometheus: scripts/provision.sh)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=DEPLOY
    )


def test_promtool_accepts_the_alert_rules() -> None:
    checked = promtool("check", "rules", "prometheus-alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_alert_rules_pass_their_unit_tests_with_two_api_processes() -> None:
    tested = promtool("test", "rules", "prometheus-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_unit_tests_catch_rules_that_sum_over_api_processes(tmp_path: Path) -> None:
    """The tests can fail: with fleet-wide counters summed over instances (the rules as
    they were), two failed builds seen by two API processes look like four."""
    summed = (DEPLOY / "prometheus-alerts.yml").read_text()
    summed = summed.replace(
        'max by (kind) (increase(shipway_jobs_total{state="failed"}[15m]))',
        'sum by (kind) (increase(shipway_jobs_total{state="failed"}[15m]))',
    )
    assert summed != (DEPLOY / "prometheus-alerts.yml").read_text()
    (tmp_path / "prometheus-alerts.yml").write_text(summed)
    shutil.copy(DEPLOY / "prometheus-alerts.test.yml", tmp_path)

    tested = subprocess.run(
        [str(PROMTOOL), "test", "rules", "prometheus-alerts.test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert tested.returncode != 0
    assert "two failed builds seen by two API processes" in tested.stdout + tested.stderr
