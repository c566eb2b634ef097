"""The `journal` setting: the one place its URL is read.

`parse_journal_url` turns the text into a `JournalUrl` that says which backend and where;
the journal factory chooses the backend from `scheme` and nothing else looks at the text.
A new backend adds a reader to `_READERS` (and the fields it needs to `JournalUrl`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SQLITE_PREFIX = "sqlite:///"
_FORMS = "sqlite:///PATH or postgresql://USER@HOST:PORT/DB"


@dataclass(frozen=True)
class JournalUrl:
    """A checked journal URL. `str()` gives the URL as configured (it never holds a password)."""

    url: str
    scheme: str
    """The backend: `sqlite` or `postgresql`."""
    path: Path | None = None
    """The SQLite file."""

    def __str__(self) -> str:
        return self.url


def _sqlite(url: str) -> JournalUrl:
    """`sqlite:///var/lib/x.db` is /var/lib/x.db; `sqlite:///./x.db` and `sqlite:///../x.db` are
    relative to the working directory."""
    rest = url.removeprefix(SQLITE_PREFIX)
    if not url.startswith(SQLITE_PREFIX) or not rest:
        raise ValueError(f"must be sqlite:///PATH, got {url!r}")
    return JournalUrl(url, "sqlite", path=Path(rest) if rest.startswith(("./", "../")) else Path("/" + rest))


def _postgresql(url: str) -> JournalUrl:
    """A libpq URL (`postgresql://USER@HOST:PORT/DB?sslmode=...`); the password is never part of it."""
    parts = urlsplit(url)
    if parts.password is not None or "password" in parse_qs(parts.query):
        # A password in the URL would reach logs and process listings; secrets live in files.
        raise ValueError(
            "must not carry a password; use journal_password_file, or a libpq service or passfile"
        )
    return JournalUrl(url, "postgresql")


_READERS: dict[str, Callable[[str], JournalUrl]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "postgres": _postgresql,
}


def parse_journal_url(value: Any) -> JournalUrl:
    """The `JournalUrl` for a configured value (a `JournalUrl` is returned as it is).

    Raises:
        ValueError: not a string, or not a URL of a supported backend; the message says which.
    """
    if isinstance(value, JournalUrl):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    scheme = value.split("://", 1)[0] if "://" in value else ""
    reader = _READERS.get(scheme)
    if reader is None:
        raise ValueError(f"must be {_FORMS}, got a {scheme!r} URL" if scheme else f"must be {_FORMS}")
    return reader(value)
