"""Free ports for the topologies' published ranges."""

from __future__ import annotations

import random
import socket


def free_port_range(size: int, *, low: int = 21000, high: int = 29000) -> int:
    """The first port of ``size`` consecutive ports nothing listens on (checked now)."""
    for _ in range(200):
        first = random.randrange(low, high - size)
        if all(_free(port) for port in range(first, first + size)):
            return first
    raise RuntimeError(f"no {size} free consecutive ports in {low}-{high}")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
