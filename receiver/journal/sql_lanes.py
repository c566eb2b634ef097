"""What every part of the shared SQL stands on: the hooks a backend supplies, and the worker's
write lane, where concurrent writes share one transaction with a savepoint each (see sql.py)."""

from __future__ import annotations

import functools
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import structlog

from receiver.journal.base import JournalUnavailable
from receiver.journal.batching import GroupCommit
from receiver.journal.coordination import Leadership, WorkSignal
from receiver.journal.sql_rows import Db, epoch_now

T = TypeVar("T")
J = TypeVar("J")
R = TypeVar("R")

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Write:
    """One of the worker's writes; `locking`: the deliveries whose objects it locks."""

    work: Callable[[Db], Any]
    locking: tuple[int, ...]


def _perform(db: Db, write: _Write) -> Any:
    return write.work(db)


def _after(noted: Sequence[Callable[[Db], Any]], work: Callable[[Db], T], db: Db) -> T:
    for earlier in noted:
        earlier(db)
    return work(db)


def new_owner() -> str:
    """This process's name on its claims: host, pid and a random part (pids repeat across pods)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqlLanes(ABC):
    """The backend's hooks and the write lane that the journal's other parts build on."""

    lease_seconds: float | None = None
    """None: claims are never taken over (one replica; a restart recovers them instead)."""
    database_errors: tuple[type[Exception], ...] = ()
    """The driver's errors: in a batch they fail one job as JournalUnavailable."""
    row_lock = ""
    """Appended to a SELECT of rows about to change: ` FOR UPDATE` where replicas compete."""

    def __init__(self) -> None:
        self.owner = new_owner()
        self.work = WorkSignal()
        self._leadership = Leadership()
        self._writes: GroupCommit[_Write, Any] = GroupCommit(self._commit_writes)
        self._noted: dict[int, list[Callable[[Db], Any]]] = {}

    # What a backend provides.

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _write_batch(self, work: Callable[[Db], T]) -> T:
        """Run `work` in one write transaction on the worker's lane; errors become JournalUnavailable."""

    @abstractmethod
    async def _write_appends(self, work: Callable[[Db], T]) -> T:
        """Like `_write_batch`, on the lane of ingest's batches."""

    @abstractmethod
    async def _read(self, work: Callable[[Db], T]) -> T:
        """Run `work` in a read-only transaction."""

    def _lock_objects(self, db: Db, object_keys: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """Serialize appends and head moves per object across replicas (PostgreSQL)."""

    def _lock_objects_of(self, db: Db, delivery_ids: Sequence[int]) -> None:  # noqa: B027 - optional hook
        """`_lock_objects` for the objects of these deliveries (PostgreSQL)."""

    def _settle(self, db: Db, *, failed: bool = False) -> None:  # noqa: B027 - optional hook
        """Wait for the statements `db` has sent but not yet heard back about, and raise their
        error (PostgreSQL pipeline mode), so a write's error is its own; after a `failed` write,
        only clear the way for the rollback."""

    def _announce_work(self, db: Db) -> None:  # noqa: B027 - optional hook
        """Tell other replicas, on commit, that new work is due (PostgreSQL NOTIFY)."""

    # Coordination.

    def leadership(self) -> Leadership:
        """Whether this replica runs singleton work; see `Leadership`."""
        return self._leadership

    async def wait_for_work(self, at_most: float) -> bool:
        """Return when new work may be due (True) or after `at_most` seconds (False)."""
        return await self.work.wait(at_most)

    # The worker's lane.

    async def ping(self) -> None:
        await self._write(
            lambda db: db.execute("UPDATE meta SET value = ? WHERE key = 'last_ping'", (str(epoch_now()),))
        )

    def _note(self, delivery_id: int, work: Callable[[Db], Any]) -> None:
        """Keep `work` for the delivery's next write, which runs it first in its own savepoint:
        one commit, all or nothing, one round trip fewer. Lost with that write if it fails or
        the process dies first; the delivery is then still unfinished and is done again."""
        self._noted.setdefault(delivery_id, []).append(work)

    async def _write(
        self, work: Callable[[Db], T], *, locking: Sequence[int] = (), delivery_id: int | None = None
    ) -> T:
        """Run `work` in its own savepoint of the worker lane's next batch (see sql.py's
        docstring); it returns once that batch has committed. `locking`: the deliveries whose
        objects `work` moves heads of, locked up front for the whole batch. `delivery_id`: the
        delivery `work` writes about, whose noted writes go first (`_note`) and lock its object
        as a state change does."""
        noted = () if delivery_id is None else self._noted.pop(delivery_id, ())
        if noted and delivery_id is not None:
            work = functools.partial(_after, noted, work)
            locking = (*locking, delivery_id)
        return cast(T, await self._writes.submit(_Write(work, tuple(locking))))

    async def _commit_writes(self, writes: Sequence[_Write]) -> Sequence[Any]:
        return await self._write_batch(functools.partial(self._write_all, writes=writes))

    def _write_all(self, db: Db, writes: Sequence[_Write]) -> list[Any]:
        self._lock_objects_of(db, [delivery_id for write in writes for delivery_id in write.locking])
        return self.each_in_savepoint(db, writes, _perform)

    def each_in_savepoint(
        self, db: Db, jobs: Sequence[J], perform: Callable[[Db, J], R]
    ) -> list[R | Exception]:
        """Perform each job in its own savepoint of the open transaction: one that fails is undone
        alone (a database error becomes JournalUnavailable) and the others still commit."""
        outcomes: list[R | Exception] = []
        for job in jobs:
            db.execute("SAVEPOINT job")
            try:
                outcome = perform(db, job)
                self._settle(db)
                outcomes.append(outcome)
            except Exception as error:
                self._settle(db, failed=True)
                db.execute("ROLLBACK TO SAVEPOINT job")
                if isinstance(error, (*self.database_errors, UnicodeError)):  # the driver refused a value
                    log.warning("journal.write_refused", error=f"{type(error).__name__}: {error}")
                    error = JournalUnavailable(f"journal refused the write: {type(error).__name__}")
                outcomes.append(error)
            db.execute("RELEASE SAVEPOINT job")
        return outcomes
