"""What the pipeline writes down about a delivery (decisions, correlations, actions, each
object's last applied and failed revision) and how long a finished delivery is kept."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from receiver.journal.base import FINAL_STATES, ActionRecord, ActionState, Correlation
from receiver.journal.sql_lanes import SqlLanes
from receiver.journal.sql_rows import (
    ACTION_COLUMNS,
    Db,
    action,
    epoch,
    epoch_now,
    insert_decision,
    placeholders,
)


class SqlRecords(SqlLanes):
    """The worker's records of its steps, and retention."""

    async def add_decision(self, delivery_id: int, text: str, **fields: Any) -> None:
        await self._write(lambda db: insert_decision(db, delivery_id, text, fields), delivery_id=delivery_id)

    def note_decision(self, delivery_id: int, text: str, **fields: Any) -> None:
        self._note(delivery_id, lambda db: insert_decision(db, delivery_id, text, fields))

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
                        None if c.committed_at is None else epoch(c.committed_at),
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

        await self._write(write, delivery_id=delivery_id)

    async def begin_action(
        self, delivery_id: int, key: str, kind: str, target: Mapping[str, Any]
    ) -> tuple[ActionRecord, bool]:
        def write(db: Db) -> tuple[ActionRecord, bool]:
            now = epoch_now()
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
            row = db.execute(f"SELECT {ACTION_COLUMNS} FROM actions WHERE key = ?", (key,)).fetchone()  # noqa: S608
            return action(row), created

        return await self._write(write, delivery_id=delivery_id)

    async def finish_action(self, key: str, state: ActionState, result: str) -> None:
        await self._write(
            lambda db: db.execute(
                "UPDATE actions SET state = ?, result = ?, updated_at = ? WHERE key = ?",
                (state.value, result, epoch_now(), key),
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
                (object_key, revision, delivery_id, epoch_now()),
            ),
            delivery_id=delivery_id,
        )

    async def prune(self, older_than: datetime) -> int:
        def write(db: Db) -> int:
            params = [epoch(older_than), *(s.value for s in FINAL_STATES)]
            selection = (
                f"SELECT id FROM deliveries WHERE received_at < ? AND state IN ({placeholders(FINAL_STATES)})"  # noqa: S608
            )
            # Duplicates keep their `duplicate_of` number even when the original is gone: it is a
            # note for operators. Actions and object state are never pruned: their keys and
            # revisions are what keeps an old event, seen again, from acting twice.
            for table in ("decisions", "correlations"):
                db.execute(f"DELETE FROM {table} WHERE delivery_id IN ({selection})", params)  # noqa: S608
            return db.execute(f"DELETE FROM deliveries WHERE id IN ({selection})", params).rowcount  # noqa: S608

        return await self._write(write)
