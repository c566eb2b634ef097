"""Chooses the journal backend from the configured URL."""

from __future__ import annotations

from pathlib import Path

from receiver.config import JournalUrl
from receiver.journal.base import Journal
from receiver.journal.sqlite import SqliteJournal
from receiver.secrets import FileSecret


def journal_from_url(url: JournalUrl, password_file: Path | None = None, *, serving: bool = False) -> Journal:
    """The journal the checked URL names (`receiver.config.journal_url` refuses any other):
    SQLite for one replica, PostgreSQL (password read from `password_file`) for several.
    `serving`: for `fluxback serve`, whose SQLite journal then refuses a second serving process."""
    if url.scheme == "sqlite" and url.path is not None:
        return SqliteJournal(url.path, serving=serving)
    if url.scheme == "postgresql":
        # Imported here: a single-replica SQLite service does not load the driver at all.
        from receiver.journal.postgres import PostgresJournal

        secret = None if password_file is None else FileSecret(password_file)
        return PostgresJournal(url.url, password_file=secret)
    raise ValueError(f"journal: no backend for {url.scheme!r} URLs")
