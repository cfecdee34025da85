"""Turn a failed build into a stable reason code and diagnostics for a person."""

from __future__ import annotations

import re
from typing import Any

from shipway.runtime.base import BuildOutcome

FROM_STEP = re.compile(r"^Step \d+/\d+ : FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE)
PULL_ERRORS = (
    "pull access denied",
    "manifest unknown",
    "not found",
    "no such host",
    "registry",
    "repository does not exist",
    "no such image",
)


def _evidence(outcome: BuildOutcome, **extra: Any) -> dict[str, Any]:
    return {
        "failing_step": outcome.failing_step,
        "error": outcome.error,
        "last_log_lines": outcome.log_tail[-20:],
        "build_seconds": round(outcome.seconds, 3),
        **extra,
    }


def classify(outcome: BuildOutcome, *, timeout_seconds: float) -> tuple[str, dict[str, Any]]:
    """(failure_reason, failure_diagnostics) of a build that did not succeed."""
    if outcome.timed_out:
        return "build_timeout", {
            "title": "Build timed out",
            "description": (
                f"The image build did not finish within {timeout_seconds:g} seconds and was "
                f"stopped during: {outcome.failing_step or 'the first step'}."
            ),
            "action": (
                "Make the slow step faster (cache dependencies, avoid network waits), or raise "
                "SHIPWAY_BUILD_TIMEOUT_SECONDS."
            ),
            "evidence": _evidence(outcome, timeout_seconds=timeout_seconds),
        }
    step = outcome.failing_step or ""
    from_match = FROM_STEP.match(step)
    error = (outcome.error or "").lower()
    if from_match and any(marker in error for marker in PULL_ERRORS):
        image = from_match.group(1)
        return "image_pull_failed", {
            "title": "Base image not available",
            "description": (
                f"The build needs the image {image!r}, which is not on this Docker engine "
                "and could not be pulled from a registry."
            ),
            "action": (
                f"Provide {image} on the build host (docker pull, docker load, or docker "
                "import), or change FROM to an image that exists there. For static sites the "
                "base image is the SHIPWAY_BASE_IMAGE setting."
            ),
            "evidence": _evidence(outcome, image=image),
        }
    return "build_failed", {
        "title": "Build failed",
        "description": (
            f"The image build failed at {step or 'an unknown step'}: "
            f"{outcome.error or 'no error message'}."
        ),
        "action": "Fix the failing step in your Dockerfile or source (see the last log lines).",
        "evidence": _evidence(outcome),
    }


def source_invalid(message: str, **evidence: Any) -> dict[str, Any]:
    """Diagnostics of a source refused at build time."""
    return {
        "title": "Source invalid",
        "description": message,
        "action": "Fix the source archive and publish again.",
        "evidence": evidence,
    }
