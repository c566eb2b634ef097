"""Replaying finished deliveries on an operator's request, for the CLI and the HTTP API alike.

A replay makes a done or dead delivery due again (with a fresh retry budget); one that is
still pending or in progress is left alone, so a replay never runs a delivery twice at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from receiver.journal import Journal


@dataclass(frozen=True, kw_only=True)
class NotReplayed:
    """Why a delivery was not replayed."""

    exists: bool
    """False: there is no delivery with that id."""
    reason: str
    """In an operator's words, e.g. `is acting; only done or dead ones replay`."""


async def replay(
    journal: Journal, delivery_ids: Sequence[int], now: datetime
) -> dict[int, NotReplayed | None]:
    """Each id, and why it was not replayed (None when it was).

    Raises:
        JournalUnavailable: the journal cannot commit or be read now; nothing was replayed.
    """
    replayed = set(await journal.replay(delivery_ids, now))
    outcomes: dict[int, NotReplayed | None] = {}
    for delivery_id in delivery_ids:
        if delivery_id in replayed:
            outcomes[delivery_id] = None
            continue
        existing = await journal.get(delivery_id)
        if existing is None:
            outcomes[delivery_id] = NotReplayed(exists=False, reason="no such delivery")
        else:
            outcomes[delivery_id] = NotReplayed(
                exists=True, reason=f"is {existing.state.value}; only done or dead ones replay"
            )
    return outcomes
