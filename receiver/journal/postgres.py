"""The journal on PostgreSQL, for several active replicas sharing one database.

The rules are the shared ones (sql.py); this module adds what several replicas need:

- **Claims** take due heads with `FOR UPDATE SKIP LOCKED`, so replicas never wait for
  or take each other's work, and a head has one owner at a time: two replicas never
  work on the same Flux object at once, and never out of order.
- **Leases.** A claim carries its owner and a lease that a heartbeat renews every
  third of `lease_seconds`; a claim not renewed in time (the replica died or hung) is
  taken over by the next claim of any replica. The action records are the fence: an
  action already performed is never performed again, whoever claims the delivery.
- **Serialized appends per object.** Appends and head moves take a transaction-level
  advisory lock per Flux object, so two replicas appending for one object (or one
  appending while another finishes its head) cannot leave a delivery without a head.
  A batch takes all of its locks first, in sorted order, before any row lock.
- **Group commit for the worker too.** The worker's writes share transactions as
  appends do (sql.py), on one writer connection of their own beside the appender's.
- **The control connection**: one dedicated connection per replica that LISTENs for
  other replicas' new work (`NOTIFY fluxback_work`, sent on commit of an append) and
  holds the leader's session advisory lock, tried again every `leader_retry_seconds`
  by non-leaders and lost as soon as the connection dies.
- **Migrations** run at start-up inside one transaction under an advisory lock, so
  replicas starting together apply them once.

Driver: psycopg 3 with psycopg_pool. Its synchronous connections run the shared
rules in the same worker threads as SQLite (one implementation, the event loop
never blocks), its async connection serves LISTEN/NOTIFY, and libpq gives the
service file, passfile and every connection option for free (asyncpg re-implements
the protocol and has no synchronous API or service files).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import structlog

from receiver.journal.base import JournalUnavailable, unapplied_migrations
from receiver.journal.postgres_schema import MIGRATIONS
from receiver.journal.sql import SqlJournal
from receiver.journal.sql_claims import CLAIM_LEASE_SECONDS
from receiver.journal.sql_rows import Cursor, Db
from receiver.secrets import FileSecret, SecretUnavailable

T = TypeVar("T")

log = structlog.get_logger(__name__)

WORK_CHANNEL = "fluxback_work"
MIGRATION_LOCK = 0x466C7578_0001
"""Advisory lock keys: 'Flux' + a number, unlikely to clash with another application's."""
LEADER_LOCK = 0x466C7578_0002
CONNECT_TIMEOUT_SECONDS = 5
POOL_TIMEOUT_SECONDS = 5.0
"""How long a request waits for a connection before it is answered 503 (PostgreSQL down or busy)."""
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""So a replica partitioned from PostgreSQL loses its session (and leadership) within ~11 s."""


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared SQL's `?` placeholders in psycopg's `%s` style (literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _lock_key(object_key: str) -> int:
    """A 64-bit advisory lock key for an object, computed here so any text (even text the
    database would refuse) has one."""
    digest = hashlib.sha256(object_key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Pending:
    """A pipelined statement's cursor: its rows and row count are waited for when read."""

    def __init__(self, cursor: psycopg.Cursor[Any], pipeline: psycopg.Pipeline) -> None:
        self._cursor = cursor
        self._pipeline = pipeline

    @property
    def rowcount(self) -> int:
        self._pipeline.sync()
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class _PgDb:
    """`pipeline`: statements are sent without waiting for their answers until one is read
    (or `sync`), so a write's UPDATEs and INSERTs cost no round trip each."""

    def __init__(self, connection: psycopg.Connection[Any], pipeline: psycopg.Pipeline | None = None) -> None:
        self._connection = connection
        self.pipeline = pipeline

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cursor = self._connection.execute(_pg(sql), params)
        return cursor if self.pipeline is None else _Pending(cursor, self.pipeline)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> object:
        with self._connection.cursor() as cursor:
            cursor.executemany(_pg(sql), rows)
        return None


class PostgresJournal(SqlJournal):
    """Journal in a PostgreSQL database; `conninfo` is a libpq URL or key=value string."""

    row_lock = " FOR UPDATE"
    database_errors = (psycopg.Error,)

    def __init__(
        self,
        conninfo: str,
        *,
        password_file: FileSecret | None = None,
        lease_seconds: float = CLAIM_LEASE_SECONDS,
        leader_retry_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        self.lease_seconds = lease_seconds
        self._conninfo = conninfo
        self._password_file = password_file
        self._leader_retry_seconds = leader_retry_seconds
        self._pool = psycopg_pool.ConnectionPool(
            conninfo,
            kwargs=self._connect_options,
            min_size=1,
            max_size=5,
            open=False,
            timeout=POOL_TIMEOUT_SECONDS,
            check=psycopg_pool.ConnectionPool.check_connection,
            name="journal",
        )
        self._appender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-append")
        self._writer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="journal-write"
        )  # one batch at a time
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="journal-read")
        self._tasks: list[asyncio.Task[None]] = []

    def _connect_options(self) -> dict[str, Any]:
        """Read for every new connection, so a rotated password file is picked up."""
        options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "fluxback"}
        if self._password_file is not None:
            try:
                options["password"] = self._password_file.read_text()
            except SecretUnavailable as error:
                raise psycopg.OperationalError(str(error)) from None
        return options

    async def _in(
        self, executor: ThreadPoolExecutor, work: Callable[[Db], T], *, pipelined: bool = False
    ) -> T:
        def call() -> T:
            try:
                with self._pool.connection() as connection:
                    if not pipelined:
                        with connection.transaction():
                            return work(_PgDb(connection))
                    with connection.pipeline() as pipeline, connection.transaction():
                        return work(_PgDb(connection, pipeline))
            except psycopg.Error as error:
                raise JournalUnavailable(f"journal cannot commit: {type(error).__name__}: {error}") from error

        if self._pool.closed:
            raise JournalUnavailable("journal is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def _write_batch(self, work: Callable[[Db], T]) -> T:
        return await self._in(self._writer, work, pipelined=True)

    async def _write_appends(self, work: Callable[[Db], T]) -> T:
        return await self._in(self._appender, work)

    async def _read(self, work: Callable[[Db], T]) -> T:
        return await self._in(self._readers, work)

    def _lock_objects(self, db: Db, object_keys: Iterable[str]) -> None:
        # In one sorted order, so two transactions locking several objects cannot deadlock.
        db.execute(
            "SELECT pg_advisory_xact_lock(k)"
            " FROM (SELECT k FROM unnest(?::bigint[]) AS k ORDER BY k) AS keys",
            (sorted({_lock_key(key) for key in object_keys}),),
        )

    def _lock_objects_of(self, db: Db, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            rows = db.execute(
                "SELECT DISTINCT kind || '/' || namespace || '/' || name FROM deliveries WHERE id = ANY(?)",
                (sorted(set(delivery_ids)),),
            ).fetchall()
            self._lock_objects(db, [row[0] for row in rows])

    def _settle(self, db: Db, *, failed: bool = False) -> None:
        pipeline = db.pipeline if isinstance(db, _PgDb) else None
        if pipeline is None:
            return
        try:
            pipeline.sync()
        except psycopg.Error:
            if not failed:
                raise
            # The write's own error, seen again: the sync ends the aborted stretch of the pipeline.

    def _announce_work(self, db: Db) -> None:
        db.execute("SELECT pg_notify(?, ?)", (WORK_CHANNEL, self.owner))

    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._open_and_migrate)
        except psycopg.Error as error:
            raise JournalUnavailable(f"cannot open journal: {type(error).__name__}: {error}") from error
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="journal-heartbeat"),
            asyncio.create_task(self._control(), name="journal-control"),
        ]

    def _open_and_migrate(self) -> None:
        # On a connection of its own, so a refusal (password, database, host) says exactly why.
        with psycopg.connect(self._conninfo, **self._connect_options()) as connection:
            _migrate(connection)
        self._pool.open(wait=False)

    async def close(self) -> None:
        if self._pool.closed:
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._leadership.set(False)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._pool.close)
        for executor in (self._appender, self._writer, self._readers):
            executor.shutdown(wait=True)

    async def _heartbeat(self) -> None:
        assert self.lease_seconds is not None
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew_claims()
            except JournalUnavailable as error:
                log.warning("journal.heartbeat_failed", error=str(error))

    async def _control(self) -> None:
        """LISTEN for other replicas' work and hold or try for leadership, reconnecting forever."""
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, **KEEPALIVES, **self._connect_options()
                )
                async with connection:
                    await connection.execute(f"LISTEN {WORK_CHANNEL}")
                    while True:
                        if not self._leadership.is_leader:
                            tried = await connection.execute(
                                "SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)
                            )
                            row = await tried.fetchone()
                            if row is not None and row[0]:
                                log.info("journal.leading", owner=self.owner)
                                self._leadership.set(True)
                        async for notice in connection.notifies(timeout=self._leader_retry_seconds):
                            if notice.payload != self.owner:
                                self.work.notify()
                        await connection.execute("SELECT 1")  # a dead session shows here at the latest
            except psycopg.Error as error:
                log.warning(
                    "journal.control_connection_lost", error=str(error), was_leader=self._leadership.is_leader
                )
                self._leadership.set(False)
                await asyncio.sleep(self._leader_retry_seconds)
            finally:
                self._leadership.set(False)


def _migrate(connection: psycopg.Connection[Any]) -> None:
    """Apply the migrations the database has not seen yet, in one transaction under an advisory
    lock: replicas starting together wait for each other, and the later ones find nothing to do."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = (row[0] if row else None) or 0
        for version, script in unapplied_migrations(MIGRATIONS, current, psycopg.DataError):
            for statement in script:
                connection.execute(statement.encode())
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
