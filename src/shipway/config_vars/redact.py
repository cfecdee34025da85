"""Take secret values out of anything shipway records (diagnostics, progress, logs)."""

from __future__ import annotations

from typing import Any

REDACTED = "[redacted]"
MIN_LENGTH = 4  # shorter values would blank out ordinary words; such a secret is no secret


def redact(value: Any, secrets: list[str]) -> Any:
    """``value`` (str, list, dict, nested) with every secret replaced by ``[redacted]``."""
    wanted = sorted({s for s in secrets if len(s) >= MIN_LENGTH}, key=len, reverse=True)
    return _walk(value, wanted) if wanted else value


def _walk(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(item, secrets) for item in value]
    return value
