"""`fluxback deliveries` output for a terminal: a table of deliveries and the story of one.

Only layout lives here; what a delivery means comes from `receiver.explain`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from receiver.explain import Link, Story, why
from receiver.journal import Delivery

_LONG_HEX = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28,52}\b")
_MAX_WHY = 160
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters (escape sequences included) from an event or a commit never reach the terminal."""


def _clean(text: str) -> str:
    return _CONTROL.sub("?", text)


def short(revision: str) -> str:
    """A revision with its long hashes cut to 12 characters, for a table that fits a terminal."""
    return _LONG_HEX.sub(r"\1", revision)


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(deliveries: Sequence[Delivery]) -> str:
    """Deliveries as aligned columns, newest first; WHY is the one fact that explains each."""
    rows: list[tuple[str, ...]] = [
        ("ID", "STATE", "RECEIVED (UTC)", "OBJECT", "REASON", "OUTCOME", "REVISION", "TRIES", "WHY")
    ]
    for d in deliveries:
        explained = why(d)
        rows.append(
            (
                str(d.id),
                d.state.value,
                _time(d.received_at),
                d.object_key,
                d.reason,
                d.outcome,
                short(d.revision or "-"),
                str(d.attempts),
                _cut(f"{explained.cause.value}: {explained.text}", _MAX_WHY),
            )
        )
    rows = [tuple(_clean(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _links(links: Sequence[Link], indent: str) -> list[str]:
    return [f"{indent}{link.text}: {link.url}" for link in links]


def _event_lines(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return [f"  {event}"]
    lines = [
        f"  {key}: {event[key]}"
        for key in ("severity", "reason", "message", "timestamp", "reportingController")
        if key in event
    ]
    metadata = event.get("metadata")
    if isinstance(metadata, dict):
        lines += [f"  metadata.{key}: {value}" for key, value in metadata.items()]
    return lines


def story_text(told: Story) -> str:
    """Everything recorded for one delivery, for `fluxback deliveries show ID`."""
    d = told.delivery
    lines = [
        f"delivery {d.id}: {d.state.value}",
        f"  object:   {d.object_key}",
        f"  event:    {d.reason} ({d.outcome}, severity {d.severity})",
        f"  revision: {d.revision or '-'}",
        f"  received: {_time(d.received_at)} UTC, {d.attempts} attempt(s)",
        f"  source:   {d.source}, authenticated by {d.authenticated_by}",
        f"  why:      {told.why.cause.value}: {told.why.text}",
    ]
    if d.duplicate_of is not None:
        lines.append(f"  see:      fluxback deliveries show {d.duplicate_of}")
    lines += ["", "event (as Flux sent it)", *_event_lines(told.event)]
    lines += ["", f"commits ({len(told.commits)})"]
    for commit in told.commits:
        c = commit.correlation
        lines.append(f"  {c.commit[:12]}  {_time(c.committed_at)}  {c.subject}")
        lines += [f"      {key}: {value}" for key, value in commit.trailers]
        lines.append(f"      -> {c.verdict}")
        lines += _links(commit.links, "      ")
    lines += ["", f"decisions ({len(told.decisions)})"]
    lines += [f"  {_time(decision.at)}  {decision.text}" for decision in told.decisions]
    lines += ["", f"actions ({len(told.actions)})"]
    for action in told.actions:
        a = action.record
        lines.append(f"  {a.kind} {a.state.value} after {a.attempts} attempt(s): {a.result}")
        lines.append(f"      target: {json.dumps(dict(a.target), sort_keys=True)}")
        lines += _links(action.links, "      ")
    return "\n".join(_clean(line) for line in lines)
