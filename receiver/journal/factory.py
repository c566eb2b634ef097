"""Chooses the journal backend from the configured URL."""

from __future__ import annotations

from receiver.config import JournalUrl
from receiver.journal.base import Journal
from receiver.journal.sqlite import SqliteJournal


def journal_from_url(url: JournalUrl) -> Journal:
    """The journal the checked URL names (`receiver.config.journal_url` refuses any other)."""
    if url.scheme == "sqlite" and url.path is not None:
        return SqliteJournal(url.path)
    raise ValueError(f"journal: no backend for {url.scheme!r} URLs")
