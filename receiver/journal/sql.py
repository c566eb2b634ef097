"""The journal's rules, written once in SQL that SQLite and PostgreSQL both run.

Backends (sqlite.py, postgres.py) supply connections, threads and a few dialect
hooks; everything a delivery goes through is here, so both keep the same
semantics by construction and run the same test suite.

Three things keep the cost of the loop flat as the backlog grows:

- **Heads.** `object_heads` holds one row per Flux object with unfinished work:
  its oldest unfinished delivery, when it is due and who has claimed it. A claim
  reads the due, unclaimed heads from a partial index and touches only the rows
  it returns; finishing a delivery moves the head to the object's next unfinished
  delivery with one index seek. Per-object order follows: only a head is ever
  worked on, and a head has at most one owner.
- **Group commit.** Concurrent `append`s queue up and are written together in one
  transaction (one fsync); each keeps its own savepoint, so one bad event fails
  alone, while a failed commit fails every event of the batch and writes none.
  Each request still gets its answer only after its own row is durable. The
  worker's writes (claims, state changes, decisions, actions) are batched the
  same way on a lane of their own, with a savepoint each, for the same reason: a
  write the database refuses (or a lost claim) concerns one delivery, and its
  neighbours in the batch should not have to be retried for it.
- **One lock order.** Writes that move a head lock their objects (PostgreSQL
  advisory locks) for the whole batch before anything else, in sorted order, as a
  batch of appends does: several writes taking them one by one in their own order
  could deadlock with an append batch or another replica's writes.
- **Separate lanes.** Appends and the worker's writes are separate batches on
  separate connections, so neither queues behind a long line of the other, and
  reads never wait for writes.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

import structlog

from receiver.journal.base import (
    FINAL_STATES,
    IN_PROGRESS_STATES,
    LIKE_ESCAPE,
    PENDING_STATES,
    UNFINISHED_SQL,
    ActionRecord,
    ActionState,
    AppendResult,
    Correlation,
    Decision,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliverySummary,
    JournalUnavailable,
    NewDelivery,
    ObjectState,
    like_prefix,
)
from receiver.journal.batching import GroupCommit
from receiver.journal.coordination import Leadership, WorkSignal

T = TypeVar("T")
J = TypeVar("J")
R = TypeVar("R")

log = structlog.get_logger(__name__)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> builtins.list[Any]: ...


class Db(Protocol):
    """One connection inside one transaction; `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> object: ...


_SUMMARY_COLUMNS = (
    "id, state, received_at, updated_at, kind, namespace, name, reason, severity, outcome, "
    "revision, commit_sha, attempts, next_attempt_at, duplicate_of, last_error,"
    " COALESCE(retry_since, received_at), source"
)
_CORRELATION_COLUMNS = (
    "delivery_id, commit_sha, committed_at, subject, dag_id, run_id, task_ids, map_index, instance, verdict"
)
_ACTION_COLUMNS = "key, delivery_id, kind, target, state, result, attempts, created_at, updated_at"
DUE_HEADS = (
    "SELECT object_key, delivery_id, owner FROM object_heads"
    " WHERE owner IS NULL AND due_at <= ? ORDER BY due_at, delivery_id LIMIT ?"
)
"""What a claim reads: the partial index `object_heads_due` holds exactly the unclaimed heads."""
STALE_HEADS = (
    "SELECT object_key, delivery_id, owner FROM object_heads"
    " WHERE owner IS NOT NULL AND lease_until < ? ORDER BY lease_until LIMIT ?"
)
NEXT_UNFINISHED = (
    "SELECT id, COALESCE(next_attempt_at, received_at) FROM deliveries"  # noqa: S608
    f" WHERE kind = ? AND namespace = ? AND name = ? AND {UNFINISHED_SQL} ORDER BY id LIMIT 1"
)
"""An object's next head: one seek in the partial index `deliveries_unfinished`."""
RESTART_NOTE = "interrupted by a restart; taken up again (finished actions are kept)"
_RELEASE_HEADS = "UPDATE object_heads SET owner = NULL, lease_until = NULL, due_at = ?"
FINAL_VALUES = tuple(s.value for s in FINAL_STATES)
CLAIM_LEASE_SECONDS = 30.0
"""A claim not renewed for this long is stale and may be taken over (PostgreSQL)."""


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class _Write:
    """One of the worker's writes; `locking`: the deliveries whose objects it locks."""

    work: Callable[[Db], Any]
    locking: tuple[int, ...]


def _perform(db: Db, write: _Write) -> Any:
    return write.work(db)


def new_owner() -> str:
    """This process's name on its claims: host, pid and a random part (pids repeat across pods)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqlJournal(ABC):
    """The Journal protocol over a backend's connections (see the module docstring)."""

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
        self._appends: GroupCommit[NewDelivery, AppendResult] = GroupCommit(self._commit_appends)
        self._writes: GroupCommit[_Write, Any] = GroupCommit(self._commit_writes)

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

    def leadership(self) -> Leadership:
        """Whether this replica runs singleton work; see `Leadership`."""
        return self._leadership

    async def wait_for_work(self, at_most: float) -> bool:
        """Return when new work may be due (True) or after `at_most` seconds (False)."""
        return await self.work.wait(at_most)

    async def _write(self, work: Callable[[Db], T], *, locking: Sequence[int] = ()) -> T:
        """Run `work` in its own savepoint of the worker lane's next batch (see the module
        docstring); it returns once that batch has committed. `locking`: the deliveries whose
        objects `work` moves heads of, locked up front for the whole batch."""
        return cast(T, await self._writes.submit(_Write(work, tuple(locking))))

    async def _commit_writes(self, writes: Sequence[_Write]) -> Sequence[Any]:
        return await self._write_batch(functools.partial(self._write_all, writes=writes))

    def _write_all(self, db: Db, writes: Sequence[_Write]) -> builtins.list[Any]:
        self._lock_objects_of(db, [delivery_id for write in writes for delivery_id in write.locking])
        return self.each_in_savepoint(db, writes, _perform)

    # Ingest.

    async def ping(self) -> None:
        await self._write(
            lambda db: db.execute("UPDATE meta SET value = ? WHERE key = 'last_ping'", (str(_now()),))
        )

    async def append(self, delivery: NewDelivery) -> AppendResult:
        return await self._appends.submit(delivery)

    async def _commit_appends(self, deliveries: Sequence[NewDelivery]) -> Sequence[AppendResult | Exception]:
        outcomes = await self._write_appends(functools.partial(self._append_batch, deliveries=deliveries))
        if any(isinstance(o, AppendResult) and not o.duplicate for o in outcomes):
            self.work.notify()
        return outcomes

    def _append_batch(self, db: Db, deliveries: Sequence[NewDelivery]) -> list[AppendResult | Exception]:
        self._lock_objects(db, {d.object_key for d in deliveries})
        outcomes = self.each_in_savepoint(db, deliveries, _append_one)
        if any(isinstance(o, AppendResult) and not o.duplicate for o in outcomes):
            self._announce_work(db)
        return outcomes

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

    # Reading.

    async def get(self, delivery_id: int) -> Delivery | None:
        def read(db: Db) -> Delivery | None:
            found = _load_deliveries(db, [delivery_id])
            return found[0] if found else None

        return await self._read(read)

    async def list(self, query: DeliveryFilter) -> Sequence[DeliverySummary]:
        def read(db: Db) -> builtins.list[DeliverySummary]:
            clauses: builtins.list[str] = []
            params: builtins.list[Any] = []
            if query.revision:
                prefix = like_prefix(query.revision.lower())
                clauses.append(
                    f"(revision = ? OR commit_sha LIKE ? ESCAPE '{LIKE_ESCAPE}' OR ? LIKE commit_sha || '%'"  # noqa: S608
                    " OR id IN (SELECT delivery_id FROM correlations"
                    f" WHERE commit_sha LIKE ? ESCAPE '{LIKE_ESCAPE}'))"
                )
                params += [query.revision, prefix, query.revision.lower(), prefix]
            if query.object_key:
                kind, _, rest = query.object_key.partition("/")
                namespace, _, name = rest.partition("/")
                clauses.append("kind = ? AND namespace = ? AND name = ?")
                params += [kind, namespace, name]
            if query.state:
                clauses.append("state = ?")
                params.append(query.state.value)
            if query.dag_id:
                clauses.append("id IN (SELECT delivery_id FROM correlations WHERE dag_id = ?)")
                params.append(query.dag_id)
            if query.before_id is not None:
                clauses.append("id < ?")
                params.append(query.before_id)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            rows = db.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM deliveries {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
                [*params, query.limit],
            ).fetchall()
            return [_summary(row) for row in rows]

        return await self._read(read)

    async def depth(self) -> Mapping[DeliveryState, int]:
        def read(db: Db) -> dict[DeliveryState, int]:
            counts = dict.fromkeys(DeliveryState, 0)
            rows = db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
            for state, count in rows:
                counts[DeliveryState(state)] = count
            return counts

        return await self._read(read)

    async def object_state(self, object_key: str) -> ObjectState:
        def read(db: Db) -> ObjectState:
            row = db.execute(
                "SELECT last_applied, last_failed FROM object_state WHERE object_key = ?", (object_key,)
            ).fetchone()
            if row is None:
                return ObjectState(object_key=object_key, last_applied=None, last_failed=None)
            return ObjectState(object_key=object_key, last_applied=row[0], last_failed=row[1])

        return await self._read(read)

    # The worker.

    async def recover_interrupted(self) -> int:
        """One replica (no lease): everything in progress was this process's, before a restart.
        With leases (several replicas) a stale claim is taken over by `claim` instead."""
        if self.lease_seconds is not None:
            return 0

        def write(db: Db) -> int:
            marks = ",".join("?" for _ in IN_PROGRESS_STATES)
            interrupted = [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM deliveries WHERE state IN ({marks})",  # noqa: S608
                    [s.value for s in IN_PROGRESS_STATES],
                ).fetchall()
            ]
            now = _now()
            for delivery_id in interrupted:
                db.execute(
                    "UPDATE deliveries SET state = ?, next_attempt_at = NULL, updated_at = ? WHERE id = ?",
                    (DeliveryState.RECEIVED.value, now, delivery_id),
                )
                _insert_decision(db, delivery_id, RESTART_NOTE, {})
            db.execute(_RELEASE_HEADS + " WHERE owner IS NOT NULL", (now,))
            return len(interrupted)

        return await self._write(write)

    async def claim(self, now: datetime, limit: int, busy_objects: frozenset[str]) -> Sequence[Delivery]:
        def write(db: Db) -> builtins.list[Delivery]:
            wanted = limit + len(busy_objects)
            taken: builtins.list[tuple[str, int, str | None]] = []
            if self.lease_seconds is not None:
                taken += db.execute(STALE_HEADS + self._skip_locked, (_now(), wanted)).fetchall()
            taken += db.execute(DUE_HEADS + self._skip_locked, (_ts(now), wanted)).fetchall()
            chosen = [row for row in taken if row[0] not in busy_objects][:limit]
            if not chosen:
                return []
            stamp = _now()
            lease_until = None if self.lease_seconds is None else stamp + self.lease_seconds
            db.executemany(
                "UPDATE object_heads SET owner = ?, lease_until = ? WHERE object_key = ?",
                [(self.owner, lease_until, key) for key, _, _ in chosen],
            )
            db.executemany(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                [(DeliveryState.RESOLVING.value, stamp, delivery_id) for _, delivery_id, _ in chosen],
            )
            for _, delivery_id, previous in chosen:
                if previous is not None:
                    _insert_decision(
                        db,
                        delivery_id,
                        f"taken over from replica {previous}, whose claim was not renewed;"
                        " finished actions are kept",
                        {"previous_owner": previous},
                    )
            return _load_deliveries(db, [delivery_id for _, delivery_id, _ in chosen])

        return await self._write(write)

    async def renew_claims(self) -> None:
        """Extend this process's claims (the heartbeat; only meaningful with leases)."""
        if self.lease_seconds is None:
            return
        lease_until = _now() + self.lease_seconds
        await self._write(
            lambda db: db.execute(
                "UPDATE object_heads SET lease_until = ? WHERE owner = ?", (lease_until, self.owner)
            )
        )

    async def set_state(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        next_attempt_at: datetime | None = None,
        error: str | None = None,
        decision: str | None = None,
    ) -> None:
        def write(db: Db) -> None:
            # The delivery, and its head row if it is one (locked): one round trip.
            current = db.execute(
                "SELECT d.state, d.kind, d.namespace, d.name, h.delivery_id IS NOT NULL, h.owner"  # noqa: S608
                " FROM deliveries AS d LEFT JOIN (SELECT delivery_id, owner FROM object_heads"
                f" WHERE delivery_id = ?{self.row_lock}) AS h ON TRUE WHERE d.id = ?",
                (delivery_id, delivery_id),
            ).fetchone()
            if current is None:
                return
            is_head, owner = bool(current[4]), current[5]
            taken_over = is_head and owner not in (None, self.owner)
            finished_elsewhere = not is_head and current[0] in FINAL_STATES
            if taken_over or finished_elsewhere:
                # Another replica took this delivery over after our claim went stale: its word counts.
                log.warning("journal.claim_lost", delivery_id=delivery_id, state=state.value)
                return
            due = None if next_attempt_at is None else _ts(next_attempt_at)
            db.execute(
                "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = COALESCE(?, last_error),"
                " updated_at = ? WHERE id = ?",
                (state.value, due, error, _now(), delivery_id),
            )
            if state in PENDING_STATES and is_head:
                db.execute(_RELEASE_HEADS + " WHERE delivery_id = ?", (due or _now(), delivery_id))
            elif state in FINAL_STATES:
                self._move_head(db, delivery_id, *current[1:4])
            if decision is not None:
                _insert_decision(db, delivery_id, decision, {})

        await self._write(write, locking=[delivery_id])

    @property
    def _skip_locked(self) -> str:
        return f"{self.row_lock} SKIP LOCKED" if self.row_lock else ""

    def _move_head(self, db: Db, finished_id: int, kind: str, namespace: str, name: str) -> None:
        """Point the object's head at its oldest unfinished delivery, or drop it when there is none."""
        object_key = f"{kind}/{namespace}/{name}"
        following = db.execute(NEXT_UNFINISHED, (kind, namespace, name)).fetchone()
        if following is None:
            db.execute("DELETE FROM object_heads WHERE object_key = ?", (object_key,))
            return
        db.execute(
            "INSERT INTO object_heads (object_key, delivery_id, due_at, owner, lease_until)"
            " VALUES (?, ?, ?, NULL, NULL) ON CONFLICT (object_key) DO UPDATE SET"
            " delivery_id = excluded.delivery_id, due_at = excluded.due_at, owner = NULL, lease_until = NULL"
            " WHERE object_heads.owner IS NULL OR object_heads.delivery_id = ?",  # never steal a live claim
            (object_key, following[0], following[1], finished_id),
        )

    async def add_decision(self, delivery_id: int, text: str, **fields: Any) -> None:
        await self._write(lambda db: _insert_decision(db, delivery_id, text, fields))

    async def set_correlations(self, delivery_id: int, correlations: Sequence[Correlation]) -> None:
        def write(db: Db) -> None:
            db.execute("DELETE FROM correlations WHERE delivery_id = ?", (delivery_id,))
            db.executemany(
                "INSERT INTO correlations (delivery_id, position, commit_sha, committed_at, subject, dag_id,"
                " run_id, task_ids, map_index, instance, verdict) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        delivery_id,
                        position,
                        c.commit,
                        None if c.committed_at is None else _ts(c.committed_at),
                        c.subject,
                        c.dag_id,
                        c.run_id,
                        json.dumps(list(c.task_ids)),
                        c.map_index,
                        c.instance,
                        c.verdict,
                    )
                    for position, c in enumerate(correlations)
                ],
            )

        await self._write(write)

    async def begin_action(
        self, delivery_id: int, key: str, kind: str, target: Mapping[str, Any]
    ) -> tuple[ActionRecord, bool]:
        def write(db: Db) -> tuple[ActionRecord, bool]:
            now = _now()
            created = (
                db.execute(
                    "INSERT INTO actions (key, delivery_id, kind, target, state, result, attempts,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,'',1,?,?) ON CONFLICT (key) DO NOTHING",
                    (key, delivery_id, kind, json.dumps(dict(target), sort_keys=True), "started", now, now),
                ).rowcount
                == 1
            )
            if not created:
                db.execute(
                    "UPDATE actions SET attempts = attempts + 1, updated_at = ? WHERE key = ?", (now, key)
                )
            row = db.execute(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE key = ?", (key,)).fetchone()  # noqa: S608
            return _action(row), created

        return await self._write(write)

    async def finish_action(self, key: str, state: ActionState, result: str) -> None:
        await self._write(
            lambda db: db.execute(
                "UPDATE actions SET state = ?, result = ?, updated_at = ? WHERE key = ?",
                (state.value, result, _now(), key),
            )
        )

    async def set_applied(self, object_key: str, revision: str, delivery_id: int) -> None:
        await self._set_object_column(object_key, "last_applied", "applied_by", revision, delivery_id)

    async def set_failed(self, object_key: str, revision: str, delivery_id: int) -> None:
        await self._set_object_column(object_key, "last_failed", "failed_by", revision, delivery_id)

    async def _set_object_column(
        self, object_key: str, column: str, by_column: str, revision: str, delivery_id: int
    ) -> None:
        # Deliveries arrive in id order; a replayed older one must not move the state back.
        await self._write(
            lambda db: db.execute(
                f"INSERT INTO object_state (object_key, {column}, {by_column}, updated_at)"  # noqa: S608
                f" VALUES (?, ?, ?, ?) ON CONFLICT (object_key) DO UPDATE SET {column} = excluded.{column},"
                f" {by_column} = excluded.{by_column}, updated_at = excluded.updated_at"
                f" WHERE COALESCE(object_state.{by_column}, 0) <= excluded.{by_column}",
                (object_key, revision, delivery_id, _now()),
            )
        )

    async def replay(self, delivery_ids: Sequence[int], now: datetime) -> builtins.list[int]:
        def write(db: Db) -> builtins.list[int]:
            replayed: builtins.list[int] = []
            finished = ",".join("?" for _ in FINAL_STATES)
            for delivery_id in delivery_ids:
                row = db.execute(
                    "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = NULL,"  # noqa: S608
                    f" retry_since = ?, updated_at = ? WHERE id = ? AND state IN ({finished})"
                    " RETURNING kind || '/' || namespace || '/' || name",
                    (DeliveryState.RECEIVED.value, _ts(now), _ts(now), delivery_id, *FINAL_VALUES),
                ).fetchone()
                if row is None:
                    continue
                # It becomes the head unless an older one is, or the head is being worked on
                # (then it follows once that one finishes).
                db.execute(
                    "INSERT INTO object_heads (object_key, delivery_id, due_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (object_key) DO UPDATE SET delivery_id = excluded.delivery_id,"
                    " due_at = excluded.due_at WHERE object_heads.owner IS NULL"
                    " AND object_heads.delivery_id > excluded.delivery_id",
                    (row[0], delivery_id, _ts(now)),
                )
                _insert_decision(db, delivery_id, "replay requested by an operator", {})
                replayed.append(delivery_id)
            if replayed:
                self._announce_work(db)
            return replayed

        replayed = await self._write(write, locking=delivery_ids)
        if replayed:
            self.work.notify()
        return replayed

    async def prune(self, older_than: datetime) -> int:
        def write(db: Db) -> int:
            marks = ",".join("?" for _ in FINAL_STATES)
            params = [_ts(older_than), *(s.value for s in FINAL_STATES)]
            selection = f"SELECT id FROM deliveries WHERE received_at < ? AND state IN ({marks})"  # noqa: S608
            # Duplicates keep their `duplicate_of` number even when the original is gone: it is a
            # note for operators. Actions and object state are never pruned: their keys and
            # revisions are what keeps an old event, seen again, from acting twice.
            for table in ("decisions", "correlations"):
                db.execute(f"DELETE FROM {table} WHERE delivery_id IN ({selection})", params)  # noqa: S608
            return db.execute(f"DELETE FROM deliveries WHERE id IN ({selection})", params).rowcount  # noqa: S608

        return await self._write(write)


def _append_one(db: Db, delivery: NewDelivery) -> AppendResult:
    row = db.execute(
        "SELECT id, duplicate_of FROM deliveries WHERE body_sha256 = ?", (delivery.body_sha256,)
    ).fetchone()
    if row is not None:
        return AppendResult(row[0], True, row[1])
    original = None
    if delivery.dedupe_key is not None:
        # Only the object's latest event that could act counts: a heartbeat repeats it,
        # while a return to an earlier revision after another one is news again.
        latest = db.execute(
            "SELECT id, dedupe_key FROM deliveries WHERE kind = ? AND namespace = ? AND name = ?"
            " AND duplicate_of IS NULL AND dedupe_key IS NOT NULL ORDER BY id DESC LIMIT 1",
            (delivery.kind, delivery.namespace, delivery.name),
        ).fetchone()
        original = latest[0] if latest and latest[1] == delivery.dedupe_key else None
    now = _now()
    state = DeliveryState.DONE if original is not None else DeliveryState.RECEIVED
    received = _ts(delivery.received_at)
    new_id = int(
        db.execute(
            "INSERT INTO deliveries (body, body_sha256, received_at, retry_since, updated_at, kind,"
            " namespace, name, reason, severity, outcome, revision, commit_sha, dedupe_key,"
            " duplicate_of, state, authenticated_by, source)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                delivery.body,
                delivery.body_sha256,
                received,
                received,
                now,
                delivery.kind,
                delivery.namespace,
                delivery.name,
                delivery.reason,
                delivery.severity,
                delivery.outcome,
                delivery.revision,
                delivery.commit,
                delivery.dedupe_key,
                original,
                state.value,
                delivery.authenticated_by,
                delivery.source,
            ),
        ).fetchone()[0]
    )
    if original is not None:
        _insert_decision(
            db,
            new_id,
            f"duplicate of delivery {original}: same object, revision and outcome; it is acted on once",
            {"duplicate_of": original},
        )
    else:
        # The first unfinished delivery of its object becomes the head; later ones wait behind it.
        db.execute(
            "INSERT INTO object_heads (object_key, delivery_id, due_at) VALUES (?, ?, ?)"
            " ON CONFLICT (object_key) DO NOTHING",
            (delivery.object_key, new_id, received),
        )
    return AppendResult(new_id, original is not None, original)


def _insert_decision(db: Db, delivery_id: int, text: str, fields: Mapping[str, Any]) -> None:
    db.execute(
        "INSERT INTO decisions (delivery_id, at, text, fields) VALUES (?,?,?,?)",
        (delivery_id, _now(), text, json.dumps(dict(fields), sort_keys=True, default=str)),
    )


def _summary(row: Sequence[Any]) -> DeliverySummary:
    return DeliverySummary(**_summary_fields(row))


def _summary_fields(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "state": DeliveryState(row[1]),
        "received_at": _dt(row[2]),
        "updated_at": _dt(row[3]),
        "kind": row[4],
        "namespace": row[5],
        "name": row[6],
        "reason": row[7],
        "severity": row[8],
        "outcome": row[9],
        "revision": row[10],
        "commit": row[11],
        "attempts": row[12],
        "next_attempt_at": _dt(row[13]),
        "duplicate_of": row[14],
        "last_error": row[15],
        "retry_since": _dt(row[16]),
        "source": row[17],
    }


def _action(row: Sequence[Any]) -> ActionRecord:
    return ActionRecord(
        key=row[0],
        delivery_id=row[1],
        kind=row[2],
        target=json.loads(row[3]),
        state=ActionState(row[4]),
        result=row[5],
        attempts=row[6],
        created_at=_dt(row[7]) or datetime.now(UTC),
        updated_at=_dt(row[8]) or datetime.now(UTC),
    )


def _load_deliveries(db: Db, delivery_ids: Sequence[int]) -> builtins.list[Delivery]:
    """The deliveries with these ids (those that exist, in the given order) in four queries,
    whatever their number: a claim loads all it took at once."""
    if not delivery_ids:
        return []
    marks = ",".join("?" for _ in delivery_ids)
    ids = list(delivery_ids)
    rows = db.execute(
        f"SELECT {_SUMMARY_COLUMNS}, body, authenticated_by FROM deliveries WHERE id IN ({marks})",  # noqa: S608
        ids,
    ).fetchall()
    decisions: dict[int, builtins.list[Decision]] = {i: [] for i in ids}
    for delivery_id, at, text, fields in db.execute(
        f"SELECT delivery_id, at, text, fields FROM decisions WHERE delivery_id IN ({marks}) ORDER BY id",  # noqa: S608
        ids,
    ).fetchall():
        decisions[delivery_id].append(
            Decision(at=_dt(at) or datetime.now(UTC), text=text, fields=json.loads(fields))
        )
    correlations: dict[int, builtins.list[Correlation]] = {i: [] for i in ids}
    for r in db.execute(
        f"SELECT {_CORRELATION_COLUMNS} FROM correlations"  # noqa: S608
        f" WHERE delivery_id IN ({marks}) ORDER BY delivery_id, position",
        ids,
    ).fetchall():
        correlations[r[0]].append(
            Correlation(
                commit=r[1],
                committed_at=_dt(r[2]),
                subject=r[3],
                dag_id=r[4],
                run_id=r[5],
                task_ids=tuple(json.loads(r[6])),
                map_index=r[7],
                instance=r[8],
                verdict=r[9],
            )
        )
    actions: dict[int, builtins.list[ActionRecord]] = {i: [] for i in ids}
    for r in db.execute(
        f"SELECT {_ACTION_COLUMNS} FROM actions WHERE delivery_id IN ({marks}) ORDER BY id",  # noqa: S608
        ids,
    ).fetchall():
        actions[r[1]].append(_action(r))
    found = {
        row[0]: Delivery(
            **_summary_fields(row),
            body=bytes(row[18]),
            authenticated_by=row[19],
            decisions=tuple(decisions[row[0]]),
            correlations=tuple(correlations[row[0]]),
            actions=tuple(actions[row[0]]),
        )
        for row in rows
    }
    return [found[i] for i in ids if i in found]
