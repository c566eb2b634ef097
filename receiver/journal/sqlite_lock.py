"""One serving process per SQLite journal: an exclusive `flock` on `<journal>.lock`.

SQLite has no claims between processes, so two services on one file would both run
workers on the same deliveries. The serving process holds the lock for its lifetime;
the kernel drops it when the process exits or dies (even by `kill -9`), so a lock file
left behind never blocks a restart, and it is never deleted (unlinking a lock file
races with the next process opening it). The CLI's `deliveries` and `replay` do not
take it: they run beside the service, and SQLite's own locking keeps them safe.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO

from receiver.journal.base import JournalUnavailable


class ServingLock:
    """The lock next to the SQLite file at `journal_path`."""

    def __init__(self, journal_path: Path) -> None:
        self.journal_path = journal_path
        self.path = journal_path.with_name(journal_path.name + ".lock")
        self._file: BinaryIO | None = None

    def acquire(self) -> None:
        """Take the lock without waiting, or raise JournalUnavailable naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+b")  # not truncated: the holder's pid stays readable
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read(32).decode("ascii", "replace").strip()
            file.close()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise JournalUnavailable(
                f"another Fluxback process already uses the SQLite journal at {self.journal_path}{pid};"
                " SQLite supports one replica: use a PostgreSQL journal for several"
            ) from None
        except OSError:
            file.close()
            raise
        file.truncate(0)
        file.write(f"{os.getpid()}\n".encode())
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the only descriptor drops the flock
            self._file = None
