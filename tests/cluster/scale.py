"""The size of the multi-node suite: ``SHIPWAY_CLUSTER_SCALE=smoke`` (the default, what
``make test`` runs) or ``full`` (``make test-cluster``: node loss and other long tests too)."""

from __future__ import annotations

import os

import pytest

SCALE = os.environ.get("SHIPWAY_CLUSTER_SCALE", "smoke")
FULL = SCALE == "full"

# Mark a long test (node loss, failover: tens of seconds) to run in the full suite only.
full_only = pytest.mark.skipif(
    not FULL, reason="a long cluster test: make test-cluster runs it (SHIPWAY_CLUSTER_SCALE=full)"
)
