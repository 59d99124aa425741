"""Reading the guest console.

The kernel prints human lines and, for tools, lines of the form
``VMIROM-JSON {"event": ...}`` (exactly that prefix, with one space).  `parse_events` extracts
the JSON objects in order; lines that are cut off or garbled are skipped, because the guest is
untrusted and a console can be truncated by a timeout.

Guest text is data, never markup or terminal control (issue 11, docs/security.md): event lines are
bounded in length and nesting before they are parsed (3,000 nested `[` used to end the run in a
RecursionError), `clip` bounds what the host shows of a guest string, and `TerminalFilter` strips
control characters and escape sequences from the console echo (the interactive console excepted,
where the guest's shell drives a terminal on purpose).  The summaries hand guest values to rich as
`rich.text.Text`, which is never parsed for markup.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

JSON_PREFIX = "VMIROM-JSON "
#: longest VMIROM-JSON line parsed (the kernel's longest event is well under 2 KiB)
MAX_EVENT_LINE = 16 << 10
#: deepest nesting of [ and { accepted in an event (the kernel's events nest 3 deep)
MAX_EVENT_DEPTH = 16
#: what the host shows of one guest-provided string in a summary
MAX_SHOWN = 200
_C0_C1 = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


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
        if len(payload) > MAX_EVENT_LINE or _depth(payload) > MAX_EVENT_DEPTH:
            continue
        try:
            obj, _ = decoder.raw_decode(payload)    # trailing bytes (line noise) are ignored
        except (ValueError, RecursionError):
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


def _depth(payload: str) -> int:
    """An upper bound of the JSON nesting depth (brackets inside strings count too: conservative)."""
    depth = deepest = 0
    for ch in payload:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def clip(value: object, limit: int = MAX_SHOWN) -> str:
    """A guest-provided value as one bounded line of plain text for a summary: control characters
    replaced, at most `limit` characters (markup safety is the renderer's job: use rich Text)."""
    text = _C0_C1.sub("\ufffd", str(value).replace("\n", " ").replace("\t", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TerminalFilter:
    """Console bytes on their way to the host terminal: UTF-8 decoded incrementally (a character
    may be split between two writes), every C0/C1 control character except newline and tab dropped
    (that removes ESC, so no escape sequence reaches the terminal; what followed it prints as plain
    text), carriage returns of CRLF kept only as the newline."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def __call__(self, data: bytes) -> bytes:
        text = self._dec.decode(data)
        return _C0_C1.sub("", text.replace("\r\n", "\n")).encode("utf-8")
