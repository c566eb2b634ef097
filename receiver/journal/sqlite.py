"""The default journal: one SQLite file in WAL mode, for a single replica.

Writes run on one thread that owns the writing connection (so the event loop
never blocks on disk and writes never interleave); reads run on a second thread
with its own connection, which WAL lets read while a write commits.
`synchronous=FULL` makes each commit durable before `append` returns, which is
what lets ingest answer `202` with a clear conscience. The single replica
always leads; the serving process holds `ServingLock`, so a second one is refused.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from receiver.journal.base import JournalUnavailable, unapplied_migrations
from receiver.journal.migrations import MIGRATIONS
from receiver.journal.sql import SqlJournal
from receiver.journal.sql_rows import Db
from receiver.journal.sqlite_lock import ServingLock

T = TypeVar("T")


class SqliteJournal(SqlJournal):
    """Journal in a SQLite file (the parent folder is created). `serving`: this is the service's
    own journal, and `open` refuses it while another process serves it (see sqlite_lock.py)."""

    database_errors = (sqlite3.Error,)

    def __init__(self, path: Path, *, serving: bool = False) -> None:
        super().__init__()
        self.path = path
        self._serving_lock = ServingLock(path) if serving else None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-read")
        self._connections: dict[ThreadPoolExecutor, sqlite3.Connection] = {}
        self._leadership.set(True)

    async def _in(self, executor: ThreadPoolExecutor, work: Callable[[Db], T]) -> T:
        def call() -> T:
            connection = self._connections.get(executor)
            if connection is None:
                raise JournalUnavailable("journal is not open")
            try:
                connection.execute("BEGIN IMMEDIATE" if executor is self._writer else "BEGIN")
                try:
                    result = work(connection)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                return result
            except sqlite3.OperationalError as error:
                raise JournalUnavailable(f"journal cannot commit: {error}") from error
            except sqlite3.DatabaseError as error:
                raise JournalUnavailable(f"journal error: {error}") from error

        if executor not in self._connections:
            raise JournalUnavailable("journal is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def _write_batch(self, work: Callable[[Db], T]) -> T:
        return await self._in(self._writer, work)

    async def _write_appends(self, work: Callable[[Db], T]) -> T:
        return await self._in(self._writer, work)

    async def _read(self, work: Callable[[Db], T]) -> T:
        return await self._in(self._reader, work)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    async def open(self) -> None:
        def open_writer() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = self._connect()
            connection.execute("PRAGMA journal_mode=WAL")
            _migrate(connection)
            self._connections[self._writer] = connection

        def open_reader() -> None:
            self._connections[self._reader] = self._connect()

        loop = asyncio.get_running_loop()
        try:
            if self._serving_lock is not None:
                self._serving_lock.acquire()  # before migrating: a refused process touches nothing
            await loop.run_in_executor(self._writer, open_writer)
            await loop.run_in_executor(self._reader, open_reader)
        except (sqlite3.Error, OSError) as error:
            await self.close()
            raise JournalUnavailable(f"cannot open journal {self.path}: {error}") from error
        except JournalUnavailable:
            await self.close()
            raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for executor in (self._writer, self._reader):
            connection = self._connections.pop(executor, None)
            if connection is not None:
                await loop.run_in_executor(executor, connection.close)
            executor.shutdown(wait=True)
        if self._serving_lock is not None:
            self._serving_lock.release()


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this file has not seen yet, all in one transaction (taken before reading
    the version, so a second process opening the same file waits instead of applying them twice)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        for version, script in unapplied_migrations(MIGRATIONS, current, sqlite3.DatabaseError):
            for statement in script:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
