"""`make bench` in miniature: every benchmark's quick mode runs and reports numbers.

Runs ``python -m bench --quick`` into a temporary file (never bench/RESULTS.md) and
checks that every section is there, none failed, and each row has a figure. Times are
never asserted: the benchmarks only print ratios.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS, RESULTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"\d")


@pytest.mark.timeout(420)
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "results.md"
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    text = output.read_text()
    assert "Machine: " in text and "## Summary" in text
    for key in BENCHMARKS:  # each one has a row with a target in the summary
        assert f"\n| {key} | " in text, key
    assert "**failed:**" not in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")]
    # Section tables: | measurement | shipway | …; the summary's rows start with a key.
    figures = [
        cells[2].strip()
        for cells in rows
        if cells[1].strip() not in {*BENCHMARKS, "measurement", "benchmark"}
        and not cells[1].startswith("---")
    ]
    assert figures and all(NUMBER.search(figure) for figure in figures), figures
    # The ratios each benchmark exists for are present.
    for needle in ("raw", "p50 / p99", "failed requests", "promote", "publish"):
        assert needle in text, needle
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before


def test_swarm_section_renders_and_replaces_itself_in_results(tmp_path: Path) -> None:
    """The swarm bench needs a cluster (make bench-cluster); its report code runs here."""
    from bench.swarm_report import Kill, Round, section, swarm_block, write_section

    rounds = [
        Round(0.6, 0.1, 0.8, 1.4, 1.2, 1.3, 1.2, {"scale": 1.0, "switch": 0.02}),
        Round(0.7, 0.1, 0.9, 1.2, 1.1, 1.4, 1.3, {"scale": 1.1, "switch": 0.03}),
    ]
    kills = [Kill(15.0, 15.1, 15.4, 1, 4, 90, 5.0, 0, 200)]
    text = section(rounds, kills, waited=0.0, load=[1.0, 1.0, 1.0]).markdown()
    assert "## Swarm" in text and "0 / 200" in text and "**failed:**" not in text
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Summary\n")
    write_section(text, results)
    write_section(text.replace("0 / 200", "1 / 200"), results)  # replaced, not appended
    written = results.read_text()
    assert written.startswith("# Benchmark results") and written.count("## Swarm") == 1
    assert "1 / 200" in written and swarm_block(written) is not None


def test_curves_draw_a_chart_and_rows_against_the_smallest_size(tmp_path: Path) -> None:
    """bench/curves.py's report code (its quick run is part of the test above)."""
    from bench.common import Section
    from bench.curves import Curve, add_point

    curve = Curve("switch", "Switch", "environments", [10, 100, 1000], {"a p50": [1, 2, 3]})
    curve.series["a p99"] = [2.0, 3.0, 4.0]
    path = curve.draw(tmp_path)
    assert path.name == "curve-switch.png" and path.read_bytes().startswith(b"\x89PNG")
    section = Section("curves", "Cost curves")
    add_point(section, "switch, 1000", 0.0125, 0.0100, size="10 environments")
    add_point(section, "other", 0.030, 0.010, size="10", target=None)
    text = section.markdown()
    assert "| switch, 1000 | 12.5 ms | 10.0 ms (10 environments) | 1.25 |" in text
    assert [row.met for row in section.rows] == [False, None]


def test_in_turn_puts_each_subject_in_each_position_equally_often() -> None:
    from bench.common import in_turn

    orders = [in_turn("abc", n) for n in range(6)]
    assert orders[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for position in range(3):
        assert sorted(order[position] for order in orders) == ["a", "a", "b", "b", "c", "c"]
