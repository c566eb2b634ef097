"""Secrets that live in files and change without a restart.

Every secret Fluxback uses (HMAC keys, bearer and admin tokens, Airflow and git
credentials) is configured as a *path*. Kubernetes rotates a mounted Secret by
swapping the file under the path, so each read checks the file's identity and
re-reads it only when it changed. The value is never part of `repr()` so it
cannot leak through a log line or a traceback.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


class SecretUnavailable(Exception):
    """The secret file cannot be read; the message names the path, never the content."""


@dataclass(frozen=True)
class _Snapshot:
    identity: tuple[int, int, int, int]
    value: bytes


class FileSecret:
    """A secret read from `path`, re-read whenever the file changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileSecret({str(self.path)!r})"

    def read(self) -> bytes:
        """The file's exact bytes (trailing newline included).

        Raises:
            SecretUnavailable: the file is missing or unreadable.
        """
        try:
            stat = os.stat(self.path)
        except OSError as error:
            raise SecretUnavailable(f"cannot read secret file {self.path}: {error.strerror}") from None
        identity = (stat.st_ino, stat.st_dev, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._snapshot is None or self._snapshot.identity != identity:
                try:
                    value = self.path.read_bytes()
                except OSError as error:
                    raise SecretUnavailable(
                        f"cannot read secret file {self.path}: {error.strerror}"
                    ) from None
                self._snapshot = _Snapshot(identity, value)
            return self._snapshot.value

    def read_text(self) -> str:
        """The file's content as text without surrounding whitespace (for usernames, passwords, tokens)."""
        try:
            return self.read().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret file {self.path} is not UTF-8 text") from None


def secret_file_problem(path: Path) -> str | None:
    """What makes `path` useless as a secret (missing, not a file, unreadable, blank), or None.

    Checked by `check-config`, at start-up and by the health checks; the message names the
    path, never the content.
    """
    try:
        with path.open("rb") as file:
            blank = not file.read().strip()
    except OSError:
        return f"cannot read file {path}"
    return f"file {path} is empty or only whitespace" if blank else None
