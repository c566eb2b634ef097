"""Chooses the journal backend from the configured URL."""

from __future__ import annotations

from receiver.config import sqlite_path
from receiver.journal.base import Journal
from receiver.journal.sqlite import SqliteJournal


def journal_from_url(url: str) -> Journal:
    """`sqlite:///path/to/journal.db` (one replica); config validation has already refused anything else."""
    path = sqlite_path(url)
    if path is not None:
        return SqliteJournal(path)
    raise ValueError(f"journal: unsupported URL {url.split('://')[0]!r}; use sqlite:///PATH")
