"""Run every benchmark and write bench/RESULTS.md (``make bench``).

    .venv/bin/python -m bench                    # everything, full size (about 15 minutes)
    .venv/bin/python -m bench --quick            # a smoke run: few rows, few rounds
    .venv/bin/python -m bench --only dispatch,reads --output /tmp/results.md

Each benchmark starts what it needs (PostgreSQL, Redis, workers, HAProxy, images) and
stops it at the end; each figure is measured beside its baseline in the same run. A
benchmark that fails is reported in its section and makes the exit status 1; the
others still run. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.common import Section, machine
from bench.swarm_report import swarm_block

RESULTS = Path(__file__).with_name("RESULTS.md")


def _dispatch(quick: bool) -> Section:
    from bench import dispatch

    return dispatch.run(quick=quick)


def _publish(quick: bool) -> Section:
    from bench import publish

    return publish.run(quick=quick)


def _promote(quick: bool) -> Section:
    from bench import promote

    result: Section = promote.run(quick=quick)
    return result


def _load(quick: bool) -> Section:
    from bench import load

    return load.run(quick=quick)


def _reads(quick: bool) -> Section:
    from bench import reads

    return reads.run(quick=quick)


def _hosts(quick: bool) -> Section:
    from bench import hosts

    return hosts.run(quick=quick)


def _curves(quick: bool) -> Section:
    from bench import curves

    return curves.run(quick=quick)


BENCHMARKS: dict[str, tuple[str, Callable[[bool], Section]]] = {
    "dispatch": ("Job dispatch", _dispatch),
    "publish": ("Publish", _publish),
    "promote": ("Promote and rollback", _promote),
    "load": ("Promotes under load", _load),
    "reads": ("Reads on big tables", _reads),
    "hosts": ("Host routing and HTTPS", _hosts),
    "curves": ("Cost curves as work grows", _curves),
}


def summary(sections: list[Section]) -> str:
    """One table of every row that has a target."""
    lines = [
        "| benchmark | measurement | figure | ratio | target | met |",
        "|---|---|---:|---:|---|---|",
    ]
    for section in sections:
        if section.error:
            lines.append(f"| {section.key} | failed: see below |  |  |  | **no** |")
        for row in section.rows:
            if row.met is None:
                continue
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
            met = "yes" if row.met else "**no**"
            lines.append(
                f"| {section.key} | {row.name} | {row.figure} | {ratio} | {row.target} | {met} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", default="", help=f"comma-separated of {', '.join(BENCHMARKS)}")
    parser.add_argument("--output", type=Path, default=None, help=f"default {RESULTS}")
    parser.add_argument("--note", default="", help="a remark printed under the header")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("BENCH_QUICK") == "1"
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    output = args.output or RESULTS
    os.environ["BENCH_CHARTS"] = str(output.resolve().parent)  # bench/curves.py's PNGs
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--note" in shown:  # the note is printed on its own below the header
        at = shown.index("--note")
        del shown[at : at + 2]
    shown = [a for a in shown if not a.startswith("--note=")]
    command = shlex.join(["python", "-m", "bench", *shown])
    sections: list[Section] = []
    for name in chosen:
        title, fn = BENCHMARKS[name]
        print(f"bench: {title} …", file=sys.stderr, flush=True)
        started, load_before = time.perf_counter(), os.getloadavg()[0]
        try:
            section = fn(quick)
        except Exception:
            section = Section(name, title, error=traceback.format_exc()[-4000:])
        section.seconds = time.perf_counter() - started
        section.notes.append(
            f"machine load average (1 min) {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after this section ({os.cpu_count()} CPUs)."
        )
        print(section.markdown(), flush=True)
        sections.append(section)
    header = [
        "# Benchmark results",
        "",
        f"`{command.strip()}`{' (quick smoke run: small sizes, few rounds)' if quick else ''}, "
        f"started {started_at}.",
        "",
        f"Machine: {machine()}.",
        "",
        *([args.note, ""] if args.note else []),
        "Each figure is measured beside its baseline in the same run; ratio = shipway / "
        "baseline (lower is better). Benchmarks never assert times: `met` only compares "
        "with the targets of issues 8 and 18. On a shared machine expect ±20 % between runs; "
        "compare ratios within one run. See bench/README.md for what each figure means.",
        "",
        "## Summary",
        "",
        summary(sections),
    ]
    text = "\n".join(header) + "\n" + "\n".join(section.markdown() for section in sections)
    kept = swarm_block(output.read_text()) if output.exists() else None
    if kept:  # the cluster figures (make bench-cluster) stay until that bench runs again
        text += "\n" + kept
    output.write_text(text)
    print(f"bench: wrote {output}", file=sys.stderr)
    return 1 if any(section.error for section in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
