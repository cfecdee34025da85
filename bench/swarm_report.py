"""The figures of ``bench/swarm.py`` as the "Swarm" section of bench/RESULTS.md.

``python -m bench`` rewrites RESULTS.md as a whole; the swarm section sits between two
markers, which ``write_section`` replaces and ``python -m bench`` carries over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Section, median, ms

PROMOTE_TARGET = 1.3
PUBLISH_TARGET = 1.2
KILLED_NODE = 2  # node 1 is the manager
SECTION_START = "<!-- swarm section: written by python -m bench.swarm --write -->"
SECTION_END = "<!-- end of swarm section -->"


@dataclass
class Round:
    """One round's samples (seconds)."""

    raw_build: float
    raw_push: float
    publish: float
    raw_service: float
    raw_per_replica: float  # shipway's layout done raw: 3 one-task services, for information
    promote: float
    created_to_active: float
    steps: dict[str, float] = field(default_factory=dict)


@dataclass
class Kill:
    """One node-kill sample: seconds after the kill, and requests through the public URL."""

    raw_running: float  # a raw service of the same image, same node loss: running again
    swarm_running: float  # shipway's replicas running again (Swarm reschedules them)
    routed: float
    failed_during: int
    sent_during: int
    slow_during: int  # answered, but after more than a second
    worst_during: float
    failed_after: int
    sent_after: int


def section(rounds: list[Round], kills: list[Kill], waited: float, load: list[float]) -> Section:
    """The figures as the "Swarm" section of bench/RESULTS.md."""
    out = Section("swarm", "Swarm: 3 nodes and a registry, beside raw Swarm")
    raw_publish = median([r.raw_build + r.raw_push for r in rounds])
    shipway_publish = median([r.publish for r in rounds])
    out.add(
        "publish: request → version ready, pushed (median)",
        ms(shipway_publish),
        baseline=ms(raw_publish),
        ratio=shipway_publish / raw_publish,
        target=f"≤ {PUBLISH_TARGET}x",
        met=shipway_publish / raw_publish <= PUBLISH_TARGET,
    )
    raw_promote = median([r.raw_service for r in rounds])
    promote = median([r.promote for r in rounds])
    out.add(
        "promote, 3 replicas on 3 nodes: request → ACTIVE and answering via HAProxy (median)",
        ms(promote),
        baseline=ms(raw_promote),
        ratio=promote / raw_promote,
        target=f"≤ {PROMOTE_TARGET}x",
        met=promote / raw_promote <= PROMOTE_TARGET,
    )
    layout = median([r.raw_per_replica for r in rounds])
    out.add(
        "promote, against shipway's layout done raw: 3 one-task services in parallel, "
        "node-picked ports, until each answers 200",
        ms(promote),
        baseline=ms(layout),
        ratio=promote / layout,
        target="for information",
    )
    active = median([r.created_to_active for r in rounds])
    out.add(
        "promote: job created → release ACTIVE (database timestamps)",
        ms(active),
        baseline=ms(raw_promote),
        ratio=active / raw_promote,
        target="for information",
    )
    if kills:
        raw = median([k.raw_running for k in kills])
        routed = median([k.routed for k in kills])
        swarm = median([k.swarm_running for k in kills])
        out.add(
            f"node {KILLED_NODE} killed → all replicas routed again (median of {len(kills)})",
            f"{routed:.1f} s",
            baseline=f"{raw:.1f} s",
            ratio=routed / raw,
            target="for information (floor: a raw service's replicas running again)",
        )
        out.add(
            f"node {KILLED_NODE} killed → shipway's replicas running again (Swarm)",
            f"{swarm:.1f} s",
            baseline=f"{raw:.1f} s",
            ratio=swarm / raw,
            target="for information",
        )
        failed = sum(k.failed_after for k in kills)
        sent = sum(k.sent_after for k in kills)
        out.add(
            "failed requests / requests through the public URL after recovery",
            f"{failed} / {sent}",
            target="0 failed",
            met=failed == 0,
        )
        out.add(
            "requests while the node was down: failed / slower than 1 s / sent (worst)",
            f"{sum(k.failed_during for k in kills)} / {sum(k.slow_during for k in kills)} / "
            f"{sum(k.sent_during for k in kills)} "
            f"({max(k.worst_during for k in kills):.1f} s)",
            target="for information",
        )
    out.notes += [
        f"{len(rounds)} round(s); publish and promote alternate which side goes first. "
        "Jobs run in-process (`run_job`, SQLite, no broker): the same path as a worker "
        "without its broker latency, as in the other benchmarks.",
        "publish per round (ms): "
        + "; ".join(
            f"raw build {r.raw_build * 1000:.0f} + push {r.raw_push * 1000:.0f} | "
            f"shipway {r.publish * 1000:.0f}"
            for r in rounds
        ),
        "promote per round (ms): "
        + "; ".join(
            f"raw {r.raw_service * 1000:.0f}, raw per replica {r.raw_per_replica * 1000:.0f} | "
            f"shipway {r.promote * 1000:.0f} "
            f"(ACTIVE {r.created_to_active * 1000:.0f})"
            for r in rounds
        ),
        "where a promote's time goes (median ms): "
        + ", ".join(
            f"{step} {median([r.steps[step] for r in rounds]) * 1000:.0f}"
            for step in rounds[0].steps
        ),
        "node kill per sample (s after the kill: raw service running / shipway's replicas "
        "running / routed; requests while down failed/slow/sent, after failed/sent): "
        + "; ".join(
            f"{k.raw_running:.1f} / {k.swarm_running:.1f} / {k.routed:.1f}; "
            f"{k.failed_during}/{k.slow_during}/"
            f"{k.sent_during}, {k.failed_after}/{k.sent_after}"
            for k in kills
        ),
        "the promoted image is pulled on every node before either side (untimed); the raw "
        "service publishes a fixed host-mode port with at most one replica per node, "
        "shipway one service per replica with a port each node picks (see "
        "runtime/swarm_runtime.py). Swarm's default dispatcher heartbeat (5 s).",
        f"waited {waited:.0f} s for the machine's cluster lock; load average (1/5/15 min) "
        f"at the start of the measurements {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
    ]
    return out


def write_section(text: str, results: Path) -> None:
    """Put ``text`` into ``results`` between the swarm markers (replacing an older one),
    leaving the rest of the file, which ``python -m bench`` writes, as it is."""
    block = f"{SECTION_START}\n{text.rstrip()}\n{SECTION_END}\n"
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    if SECTION_START in old and SECTION_END in old:
        head, _, rest = old.partition(SECTION_START)
        _, _, tail = rest.partition(SECTION_END)
        new = head + block + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    results.write_text(new)


def swarm_block(text: str) -> str | None:
    """The swarm section (with its markers) of a RESULTS.md text, or None."""
    if SECTION_START not in text or SECTION_END not in text:
        return None
    _, _, rest = text.partition(SECTION_START)
    inner, _, _ = rest.partition(SECTION_END)
    return f"{SECTION_START}{inner}{SECTION_END}\n"
