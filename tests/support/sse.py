"""Parse server-sent events (text/event-stream) in tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Message:
    """One server-sent event."""

    event: str
    id: str | None
    data: Any


def parse(lines: Iterable[str]) -> Iterator[Message]:
    """Messages from the lines of a stream (comments such as pings are skipped)."""
    event, event_id, data = "message", None, list[str]()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield Message(event=event, id=event_id, data=json.loads("\n".join(data)))
            event, event_id, data = "message", None, []
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
    if data:
        yield Message(event=event, id=event_id, data=json.loads("\n".join(data)))
