"""The version and release state machines of DESIGN.md §2 (see shipway.states)."""

from __future__ import annotations

from shipway.catalog.models import Release, Version
from shipway.states import Machine

VERSION = Machine(
    name="version",
    model=Version,
    column="state",
    transitions=frozenset(
        {
            ("created", "building"),
            ("created", "failed"),  # refused before a build could start (e.g. worker_lost)
            ("building", "ready"),
            ("building", "failed"),
            ("ready", "archived"),
        }
    ),
)

RELEASE = Machine(
    name="release",
    model=Release,
    column="status",
    transitions=frozenset(
        {
            ("DEPLOYING", "ACTIVE"),
            ("DEPLOYING", "FAILED"),
            ("DEPLOYING", "ROLLED_BACK"),
            ("ACTIVE", "UNHEALTHY"),
            ("UNHEALTHY", "ACTIVE"),
            ("ACTIVE", "DRAINING"),
            ("UNHEALTHY", "DRAINING"),  # replacing an unhealthy release with a fix
            ("DRAINING", "RETIRED"),
            ("DRAINING", "ACTIVE"),  # warm rollback: its replicas are still up
            ("ACTIVE", "ROLLED_BACK"),
            ("UNHEALTHY", "ROLLED_BACK"),
        }
    ),
)
