"""Fixtures of the chaos suite: the e2e stack, the size knob, and the printed summaries.

``SHIPWAY_CHAOS_SCALE`` picks the size: ``smoke`` (the default, run by ``make test``)
or ``full`` (``make test-chaos``). Each scenario writes one summary line; they are
printed in a "chaos summary" section at the end of the run whatever ``-s``/``-q`` say,
so CI logs show the counts.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import pytest

from tests.chaos.support import SCALE
from tests.e2e.conftest import stack
from tests.e2e.rollout_support import site_images

__all__ = ["site_images", "stack"]  # fixtures, imported for pytest

_SUMMARY = pytest.StashKey[list[str]]()


@pytest.fixture
def chaos_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report(line)``: write a summary line now (to the terminal) and in the final section."""
    config = request.config
    lines = config.stash.setdefault(_SUMMARY, [])
    terminal = config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        text = f"[{SCALE.name}] {line}"
        lines.append(text)
        if terminal is not None:
            terminal.write_line("")
            terminal.write_line(text)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every scenario's summary line at the end of the run."""
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("chaos summary")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the test item (to print process logs on failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
