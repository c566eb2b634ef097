"""The default journal: one SQLite file in WAL mode.

Every call runs on one dedicated thread that owns the connection, so the
event loop never blocks on disk and writes never interleave. `synchronous=FULL`
makes each commit durable before `append` returns, which is what lets ingest
answer `202` with a clear conscience.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from receiver.journal.base import (
    FINAL_STATES,
    IN_PROGRESS_STATES,
    LIKE_ESCAPE,
    PENDING_STATES,
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
from receiver.journal.migrations import MIGRATIONS

T = TypeVar("T")

_SUMMARY_COLUMNS = (
    "id, state, received_at, updated_at, kind, namespace, name, reason, severity, outcome, "
    "revision, commit_sha, attempts, next_attempt_at, duplicate_of, last_error,"
    " COALESCE(retry_since, received_at), source"
)


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _now() -> float:
    return time.time()


class SqliteJournal:
    """Journal in a SQLite file (the parent folder is created)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._connection: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            raise JournalUnavailable("journal is not open")

        def call() -> T:
            if self._connection is None:
                raise JournalUnavailable("journal is not open")
            try:
                with self._connection:  # one transaction: commit on success, roll back on error
                    return work(self._connection)
            except sqlite3.OperationalError as error:
                raise JournalUnavailable(f"journal cannot commit: {error}") from error
            except sqlite3.DatabaseError as error:
                raise JournalUnavailable(f"journal error: {error}") from error

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, isolation_level="DEFERRED", check_same_thread=False, timeout=5.0
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            _migrate(connection)
            self._connection = connection

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except sqlite3.Error as error:
            raise JournalUnavailable(f"cannot open journal {self.path}: {error}") from error

    async def close(self) -> None:
        def disconnect() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, disconnect)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_ping'", (str(_now()),))

        await self._run(write)

    async def append(self, delivery: NewDelivery) -> AppendResult:
        def write(db: sqlite3.Connection) -> AppendResult:
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
            cursor = db.execute(
                "INSERT INTO deliveries (body, body_sha256, received_at, retry_since, updated_at, kind,"
                " namespace, name, reason, severity, outcome, revision, commit_sha, dedupe_key,"
                " duplicate_of, state, authenticated_by, source)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    delivery.body,
                    delivery.body_sha256,
                    _ts(delivery.received_at),
                    _ts(delivery.received_at),
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
            )
            new_id = int(cursor.lastrowid or 0)
            if original is not None:
                _insert_decision(
                    db,
                    new_id,
                    f"duplicate of delivery {original}: same object, revision and outcome;"
                    " it is acted on once",
                    {"duplicate_of": original},
                )
            return AppendResult(new_id, original is not None, original)

        return await self._run(write)

    async def get(self, delivery_id: int) -> Delivery | None:
        def read(db: sqlite3.Connection) -> Delivery | None:
            row = db.execute(
                f"SELECT {_SUMMARY_COLUMNS}, body, authenticated_by FROM deliveries WHERE id = ?",  # noqa: S608
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            return _delivery(db, row)

        return await self._run(read)

    async def list(self, query: DeliveryFilter) -> Sequence[DeliverySummary]:
        def read(db: sqlite3.Connection) -> list[DeliverySummary]:
            clauses: list[str] = []
            params: list[Any] = []
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

        return await self._run(read)

    async def depth(self) -> Mapping[DeliveryState, int]:
        def read(db: sqlite3.Connection) -> dict[DeliveryState, int]:
            counts = dict.fromkeys(DeliveryState, 0)
            for state, count in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
                counts[DeliveryState(state)] = count
            return counts

        return await self._run(read)

    async def recover_interrupted(self) -> int:
        def write(db: sqlite3.Connection) -> int:
            marks = ",".join("?" for _ in IN_PROGRESS_STATES)
            interrupted = [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM deliveries WHERE state IN ({marks})",  # noqa: S608
                    [s.value for s in IN_PROGRESS_STATES],
                )
            ]
            for delivery_id in interrupted:
                db.execute(
                    "UPDATE deliveries SET state = ?, next_attempt_at = NULL, updated_at = ? WHERE id = ?",
                    (DeliveryState.RECEIVED.value, _now(), delivery_id),
                )
                _insert_decision(
                    db,
                    delivery_id,
                    "interrupted by a restart; taken up again (finished actions are kept)",
                    {},
                )
            return len(interrupted)

        return await self._run(write)

    async def claim(self, now: datetime, limit: int, busy_objects: frozenset[str]) -> Sequence[Delivery]:
        def write(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {_SUMMARY_COLUMNS}, body, authenticated_by FROM deliveries"  # noqa: S608
                f" WHERE id IN ({_HEADS}) AND state IN (?, ?)"
                " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id",
                [*_HEAD_PARAMS, *(s.value for s in PENDING_STATES), _ts(now)],
            ).fetchall()
            claimed: list[Delivery] = []
            for row in rows:
                summary = _summary(row)
                if summary.object_key in busy_objects:
                    continue
                db.execute(
                    "UPDATE deliveries SET state = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (DeliveryState.RESOLVING.value, _now(), summary.id),
                )
                refreshed = db.execute(
                    f"SELECT {_SUMMARY_COLUMNS}, body, authenticated_by FROM deliveries WHERE id = ?",  # noqa: S608
                    (summary.id,),
                ).fetchone()
                claimed.append(_delivery(db, refreshed))
                if len(claimed) >= limit:
                    break
            return claimed

        return await self._run(write)

    async def set_state(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        next_attempt_at: datetime | None = None,
        error: str | None = None,
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = COALESCE(?, last_error),"
                " updated_at = ? WHERE id = ?",
                (
                    state.value,
                    None if next_attempt_at is None else _ts(next_attempt_at),
                    error,
                    _now(),
                    delivery_id,
                ),
            )

        await self._run(write)

    async def add_decision(self, delivery_id: int, text: str, **fields: Any) -> None:
        await self._run(lambda db: _insert_decision(db, delivery_id, text, fields))

    async def set_correlations(self, delivery_id: int, correlations: Sequence[Correlation]) -> None:
        def write(db: sqlite3.Connection) -> None:
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

        await self._run(write)

    async def begin_action(
        self, delivery_id: int, key: str, kind: str, target: Mapping[str, Any]
    ) -> tuple[ActionRecord, bool]:
        def write(db: sqlite3.Connection) -> tuple[ActionRecord, bool]:
            now = _now()
            cursor = db.execute(
                "INSERT INTO actions (key, delivery_id, kind, target, state, result, attempts, created_at,"
                " updated_at) VALUES (?,?,?,?,?,'',1,?,?) ON CONFLICT(key) DO NOTHING",
                (key, delivery_id, kind, json.dumps(dict(target), sort_keys=True), "started", now, now),
            )
            created = cursor.rowcount == 1
            if not created:
                db.execute(
                    "UPDATE actions SET attempts = attempts + 1, updated_at = ? WHERE key = ?", (now, key)
                )
            row = db.execute(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE key = ?", (key,)).fetchone()  # noqa: S608
            return _action(row), created

        return await self._run(write)

    async def finish_action(self, key: str, state: ActionState, result: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE actions SET state = ?, result = ?, updated_at = ? WHERE key = ?",
                (state.value, result, _now(), key),
            )

        await self._run(write)

    async def object_state(self, object_key: str) -> ObjectState:
        def read(db: sqlite3.Connection) -> ObjectState:
            row = db.execute(
                "SELECT last_applied, last_failed FROM object_state WHERE object_key = ?", (object_key,)
            ).fetchone()
            if row is None:
                return ObjectState(object_key=object_key, last_applied=None, last_failed=None)
            return ObjectState(object_key=object_key, last_applied=row[0], last_failed=row[1])

        return await self._run(read)

    async def set_applied(self, object_key: str, revision: str, delivery_id: int) -> None:
        await self._set_object_column(object_key, "last_applied", "applied_by", revision, delivery_id)

    async def set_failed(self, object_key: str, revision: str, delivery_id: int) -> None:
        await self._set_object_column(object_key, "last_failed", "failed_by", revision, delivery_id)

    async def _set_object_column(
        self, object_key: str, column: str, by_column: str, revision: str, delivery_id: int
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            # Deliveries arrive in id order; a replayed older one must not move the state back.
            db.execute(
                f"INSERT INTO object_state (object_key, {column}, {by_column}, updated_at)"  # noqa: S608
                f" VALUES (?, ?, ?, ?) ON CONFLICT(object_key) DO UPDATE SET {column} = excluded.{column},"
                f" {by_column} = excluded.{by_column}, updated_at = excluded.updated_at"
                f" WHERE COALESCE(object_state.{by_column}, 0) <= excluded.{by_column}",
                (object_key, revision, delivery_id, _now()),
            )

        await self._run(write)

    async def replay(self, delivery_ids: Sequence[int], now: datetime) -> builtins.list[int]:
        def write(db: sqlite3.Connection) -> list[int]:
            replayed: list[int] = []
            finished = ",".join("?" for _ in FINAL_STATES)
            for delivery_id in delivery_ids:
                cursor = db.execute(
                    "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = NULL,"  # noqa: S608
                    f" retry_since = ?, updated_at = ? WHERE id = ? AND state IN ({finished})",
                    (
                        DeliveryState.RECEIVED.value,
                        _ts(now),
                        _ts(now),
                        delivery_id,
                        *(s.value for s in FINAL_STATES),
                    ),
                )
                if cursor.rowcount:
                    _insert_decision(db, delivery_id, "replay requested by an operator", {})
                    replayed.append(delivery_id)
            return replayed

        return await self._run(write)

    async def prune(self, older_than: datetime) -> int:
        def write(db: sqlite3.Connection) -> int:
            marks = ",".join("?" for _ in FINAL_STATES)
            params = [_ts(older_than), *(s.value for s in FINAL_STATES)]
            selection = f"SELECT id FROM deliveries WHERE received_at < ? AND state IN ({marks})"  # noqa: S608
            # Duplicates keep their `duplicate_of` number even when the original is gone: it is a
            # note for operators. Actions and object state are never pruned: their keys and
            # revisions are what keeps an old event, seen again, from acting twice.
            for table in ("decisions", "correlations"):
                db.execute(f"DELETE FROM {table} WHERE delivery_id IN ({selection})", params)  # noqa: S608
            return db.execute(f"DELETE FROM deliveries WHERE id IN ({selection})", params).rowcount  # noqa: S608

        return await self._run(write)


# The oldest unfinished delivery of each object. Only these may be taken: events of one
# object are handled strictly in order, so a delivery waiting for its retry holds back the
# later ones of the same object.
_UNFINISHED = (*PENDING_STATES, *IN_PROGRESS_STATES)
_HEADS = (
    "SELECT MIN(id) FROM deliveries"  # noqa: S608
    f" WHERE state IN ({','.join('?' for _ in _UNFINISHED)}) GROUP BY kind, namespace, name"
)
_HEAD_PARAMS = [s.value for s in _UNFINISHED]
_ACTION_COLUMNS = "key, delivery_id, kind, target, state, result, attempts, created_at, updated_at"


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this file has not seen yet, each in its own transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = row[0] or 0
    if current > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"journal schema version {current} is newer than this Fluxback ({len(MIGRATIONS)}); upgrade it"
        )
    for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
        with db:
            for statement in script:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def _insert_decision(db: sqlite3.Connection, delivery_id: int, text: str, fields: Mapping[str, Any]) -> None:
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


def _delivery(db: sqlite3.Connection, row: Sequence[Any]) -> Delivery:
    delivery_id = row[0]
    decisions = tuple(
        Decision(at=_dt(at) or datetime.now(UTC), text=text, fields=json.loads(fields))
        for at, text, fields in db.execute(
            "SELECT at, text, fields FROM decisions WHERE delivery_id = ? ORDER BY id", (delivery_id,)
        )
    )
    correlations = tuple(
        Correlation(
            commit=r[0],
            committed_at=_dt(r[1]),
            subject=r[2],
            dag_id=r[3],
            run_id=r[4],
            task_ids=tuple(json.loads(r[5])),
            map_index=r[6],
            instance=r[7],
            verdict=r[8],
        )
        for r in db.execute(
            "SELECT commit_sha, committed_at, subject, dag_id, run_id, task_ids, map_index, instance, verdict"
            " FROM correlations WHERE delivery_id = ? ORDER BY position",
            (delivery_id,),
        )
    )
    actions = tuple(
        _action(r)
        for r in db.execute(
            f"SELECT {_ACTION_COLUMNS} FROM actions WHERE delivery_id = ? ORDER BY id",  # noqa: S608
            (delivery_id,),
        )
    )
    return Delivery(
        **_summary_fields(row),
        body=bytes(row[18]),
        authenticated_by=row[19],
        decisions=decisions,
        correlations=correlations,
        actions=actions,
    )
