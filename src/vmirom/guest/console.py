"""Reading the guest console.

The kernel prints human lines and, for tools, lines of the form
``VMIROM-JSON {"event": ...}`` (exactly that prefix, with one space).  `parse_events` extracts
the JSON objects in order; lines that are cut off or garbled are skipped, because the guest is
untrusted and a console can be truncated by a timeout.
"""

from __future__ import annotations

import json
from typing import Any

JSON_PREFIX = "VMIROM-JSON "


def parse_events(text: str | bytes) -> list[dict[str, Any]]:
    """Every well-formed `VMIROM-JSON` object in the console text, in order (each has "event")."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    events: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        at = line.find(JSON_PREFIX)
        if at < 0:
            continue
        payload = line[at + len(JSON_PREFIX):].strip()
        try:
            obj, _ = decoder.raw_decode(payload)    # trailing bytes (line noise) are ignored
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            events.append(obj)
    return events


def find_event(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The first event called `name`, or None."""
    return next((e for e in events if e["event"] == name), None)


def last_event(events: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The last event called `name`, or None."""
    return next((e for e in reversed(events) if e["event"] == name), None)
