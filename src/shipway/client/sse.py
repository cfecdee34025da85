"""Server-sent events as the API streams them (job events, build logs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseMessage:
    """One server-sent event: its type, its id (a resume cursor) and JSON data."""

    event: str
    id: str | None
    data: Any


def parse_sse(lines: Iterator[str]) -> Iterator[SseMessage]:
    """Messages of a ``text/event-stream`` (comments such as pings are skipped)."""
    event, event_id, data = "message", None, list[str]()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload: Any = json.loads(text)
                except ValueError:
                    payload = text
                yield SseMessage(event=event, id=event_id, data=payload)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
