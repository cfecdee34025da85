"""Which CPUs a worker runs on: ``shipway worker --cpus 1-3``.

A worker running jobs flat out on the same host as the API takes the CPU the API needs to
answer: on a 2-CPU machine the API's p99 was 2.1-2.8x its idle figure with 4 workers busy,
and lowering the workers' priority (nice 19, or every other process's) did not change it.
Keeping the workers off one CPU did: 0.96-1.05x (bench/README.md, the busy curve). A CPU
list is the same text as ``taskset -c``, Docker's ``--cpuset-cpus`` and systemd's
``AllowedCPUs=``: numbers and ranges joined by commas.
"""

from __future__ import annotations

import os
import re


class CpuListError(ValueError):
    """A CPU list that cannot be parsed or names a CPU this process may not use."""


MAX_CPU = 8191
"""The highest CPU number Linux builds for (``CONFIG_NR_CPUS`` is at most 8192)."""

_PART = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of ``text`` (``"1"``, ``"1-3"``, ``"0,2-3"``); CpuListError when it is not
    such a list."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _PART.fullmatch(part)
        if match is None:
            raise CpuListError(f"{text!r} is not a CPU list such as 1, 1-3 or 0,2-3")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise CpuListError(f"{part!r} is a range whose end is before its start")
        if last > MAX_CPU:
            raise CpuListError(f"CPU {last} is beyond the highest CPU number, {MAX_CPU}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """``cpus`` as a CPU list with ranges (``{0, 1, 2, 5}`` → ``"0-2,5"``)."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def run_on(cpus: frozenset[int]) -> None:
    """Run this process (and the processes and threads it starts from now on) on ``cpus``
    only; CpuListError, changing nothing, when one of them is not available here."""
    available = frozenset(os.sched_getaffinity(0))
    missing = cpus - available
    if missing:
        raise CpuListError(
            f"CPU {format_cpu_list(missing)} is not available to this process "
            f"(it may use {format_cpu_list(available)})"
        )
    os.sched_setaffinity(0, cpus)
