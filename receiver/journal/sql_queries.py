"""The journal's reads for the CLI, the status page and the worker: one delivery, a filtered
page of them, the count per state, and an object's last revisions. Reads never wait for writes."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.journal.base import (
    LIKE_ESCAPE,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliverySummary,
    ObjectState,
    like_prefix,
)
from receiver.journal.sql_lanes import SqlLanes
from receiver.journal.sql_rows import SUMMARY_COLUMNS, Db, load_deliveries, summary


class SqlQueries(SqlLanes):
    """Reads, each in a read-only transaction of its own."""

    async def get(self, delivery_id: int) -> Delivery | None:
        def read(db: Db) -> Delivery | None:
            found = load_deliveries(db, [delivery_id])
            return found[0] if found else None

        return await self._read(read)

    async def list(self, query: DeliveryFilter) -> Sequence[DeliverySummary]:
        def read(db: Db) -> builtins.list[DeliverySummary]:
            clauses, params = _where(query)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            rows = db.execute(
                f"SELECT {SUMMARY_COLUMNS} FROM deliveries {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
                [*params, query.limit],
            ).fetchall()
            return [summary(row) for row in rows]

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


def _where(query: DeliveryFilter) -> tuple[list[str], list[Any]]:
    """The conditions of a `DeliveryFilter` (all must hold) and their parameters, in order."""
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
    return clauses, params
