"""What a config var may be called and hold (pure checks, no database)."""

from __future__ import annotations

import re
from typing import Any

from shipway.errors import InvalidInput

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_PREFIX = "SHIPWAY_"
MAX_NAME_LENGTH = 128
MAX_VALUE_BYTES = 32 * 1024
MAX_TOTAL_BYTES = 128 * 1024
MAX_VARS = 200


def check_name(name: str) -> str | None:
    """Why ``name`` is refused, or None: POSIX shell variable names, not SHIPWAY_…."""
    if not name or len(name) > MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} characters"
    if not re.fullmatch(NAME_PATTERN, name):
        return "must be letters, digits and underscores, not starting with a digit"
    if name.upper().startswith(RESERVED_PREFIX):
        return f"the {RESERVED_PREFIX} prefix is reserved for shipway"
    return None


def check_value(value: str) -> str | None:
    """Why ``value`` is refused, or None (never quoting the value: it may be a secret)."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): not text
        return "is not valid Unicode text"
    if size > MAX_VALUE_BYTES:
        return f"is over {MAX_VALUE_BYTES} bytes"
    if "\x00" in value:
        return "contains a NUL character (an environment variable cannot hold one)"
    return None


def validate_changes(*, values: dict[str, str], secrets: dict[str, str], unset: list[str]) -> None:
    """Refuse the whole change (InvalidInput, nothing written) if any part of it is wrong."""
    problems: list[dict[str, Any]] = []
    for field, names in (("values", list(values)), ("secrets", list(secrets)), ("unset", unset)):
        for name in names:
            reason = check_name(name)
            if reason:
                problems.append({"field": field, "name": shown(name), "problem": reason})
    for field, mapping in (("values", values), ("secrets", secrets)):
        for name, value in mapping.items():
            reason = check_value(value)
            if reason:
                problems.append({"field": field, "name": shown(name), "problem": reason})
    twice = (set(values) & set(secrets)) | ((set(values) | set(secrets)) & set(unset))
    problems += [
        {"field": "values", "name": name, "problem": "is given more than once"}
        for name in sorted(twice)
    ]
    if not (values or secrets or unset):
        problems.append({"field": "values", "name": "", "problem": "nothing to change"})
    if problems:
        first = problems[0]
        raise InvalidInput(
            f"config var {first['name']!r} {first['problem']}"
            if first["name"]
            else "give at least one var to set or unset",
            code="invalid_config",
            problems=problems,
        )


def shown(name: str) -> str:
    """A refused name as it can be answered: cut, and any lone surrogate escaped."""
    return name[:MAX_NAME_LENGTH].encode("utf-8", "backslashreplace").decode()


def check_totals(merged: dict[str, str]) -> None:
    """Refuse a config that would be too large for a container's environment as a whole."""
    total = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in merged.items())
    if len(merged) > MAX_VARS or total > MAX_TOTAL_BYTES:
        raise InvalidInput(
            f"the config would hold {len(merged)} vars, {total} bytes; the limits are "
            f"{MAX_VARS} vars and {MAX_TOTAL_BYTES} bytes",
            code="invalid_config",
            vars=len(merged),
            bytes=total,
        )
