"""Chooses the journal backend from the configured URL."""

from __future__ import annotations

from pathlib import Path

from receiver.journal.base import Journal


def journal_from_url(url: str) -> Journal:
    """`sqlite:///path/to/journal.db` (one replica); config validation has already refused anything else."""
    if url.startswith("sqlite:///"):
        from receiver.journal.sqlite import SqliteJournal

        return SqliteJournal(Path(url.removeprefix("sqlite://")))
    raise ValueError(f"journal: unsupported URL {url.split('://')[0]!r}; use sqlite:///PATH")
