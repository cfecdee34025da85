"""Variants of an e2e test that ``make test`` leaves to ``make test-chaos``.

``make test`` keeps one or two cases of each fault (its 20-minute budget); the other cases
of the same test (another signal, another phase, another timeout) are marked ``long`` and
run in ``make test-chaos`` (``pytest -m long tests/e2e``), or whenever
``SHIPWAY_CHAOS_SCALE`` is set.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

LONG_MARKS = (
    pytest.mark.long,
    pytest.mark.skipif(
        "SHIPWAY_CHAOS_SCALE" not in os.environ,
        reason="a further case of a fault make test covers: make test-chaos runs it "
        "(or SHIPWAY_CHAOS_SCALE=smoke|full)",
    ),
)


def long_variant(*values: Any, id: str | None = None) -> Any:
    """``pytest.param(*values)`` that only ``make test-chaos`` runs."""
    return pytest.param(*values, marks=LONG_MARKS, id=id)
