"""What the shared SQL runs on and reads back: the connection it is given, how moments are
stored (epoch seconds), and how rows become the journal's dataclasses. The column order of
each table is known here alone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from receiver.journal.base import (
    ActionRecord,
    ActionState,
    Correlation,
    Decision,
    Delivery,
    DeliveryState,
    DeliverySummary,
)

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """One connection inside one transaction; `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> object: ...


SUMMARY_COLUMNS = (
    "id, state, received_at, updated_at, kind, namespace, name, reason, severity, outcome, "
    "revision, commit_sha, attempts, next_attempt_at, duplicate_of, last_error,"
    " COALESCE(retry_since, received_at), source"
)
CORRELATION_COLUMNS = (
    "delivery_id, commit_sha, committed_at, subject, dag_id, run_id, task_ids, map_index, instance, verdict"
)
ACTION_COLUMNS = "key, delivery_id, kind, target, state, result, attempts, created_at, updated_at"


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def epoch_now() -> float:
    return time.time()


def placeholders(values: Iterable[object]) -> str:
    """`?,?,?`: one per value, for an `IN (...)`."""
    return ",".join("?" for _ in values)


def insert_decision(db: Db, delivery_id: int, text: str, fields: Mapping[str, Any]) -> None:
    """Every step records why it did what it did: ingest, claims and the pipeline alike."""
    db.execute(
        "INSERT INTO decisions (delivery_id, at, text, fields) VALUES (?,?,?,?)",
        (delivery_id, epoch_now(), text, json.dumps(dict(fields), sort_keys=True, default=str)),
    )


def summary(row: Sequence[Any]) -> DeliverySummary:
    return DeliverySummary(**summary_fields(row))


def summary_fields(row: Sequence[Any]) -> dict[str, Any]:
    """The fields of a row selected with `SUMMARY_COLUMNS` (a `Delivery` adds its own)."""
    return {
        "id": row[0],
        "state": DeliveryState(row[1]),
        "received_at": from_epoch(row[2]),
        "updated_at": from_epoch(row[3]),
        "kind": row[4],
        "namespace": row[5],
        "name": row[6],
        "reason": row[7],
        "severity": row[8],
        "outcome": row[9],
        "revision": row[10],
        "commit": row[11],
        "attempts": row[12],
        "next_attempt_at": from_epoch(row[13]),
        "duplicate_of": row[14],
        "last_error": row[15],
        "retry_since": from_epoch(row[16]),
        "source": row[17],
    }


def action(row: Sequence[Any]) -> ActionRecord:
    return ActionRecord(
        key=row[0],
        delivery_id=row[1],
        kind=row[2],
        target=json.loads(row[3]),
        state=ActionState(row[4]),
        result=row[5],
        attempts=row[6],
        created_at=from_epoch(row[7]) or datetime.now(UTC),
        updated_at=from_epoch(row[8]) or datetime.now(UTC),
    )


def correlation(row: Sequence[Any]) -> Correlation:
    return Correlation(
        commit=row[1],
        committed_at=from_epoch(row[2]),
        subject=row[3],
        dag_id=row[4],
        run_id=row[5],
        task_ids=tuple(json.loads(row[6])),
        map_index=row[7],
        instance=row[8],
        verdict=row[9],
    )


def decision(row: Sequence[Any]) -> Decision:
    return Decision(at=from_epoch(row[1]) or datetime.now(UTC), text=row[2], fields=json.loads(row[3]))


def load_deliveries(db: Db, delivery_ids: Sequence[int]) -> list[Delivery]:
    """The deliveries with these ids (those that exist, in the given order) in four queries,
    whatever their number: a claim loads all it took at once."""
    if not delivery_ids:
        return []
    ids = list(delivery_ids)
    marks = placeholders(ids)
    rows = db.execute(
        f"SELECT {SUMMARY_COLUMNS}, body, authenticated_by FROM deliveries WHERE id IN ({marks})",  # noqa: S608
        ids,
    ).fetchall()
    decisions = _by_delivery(
        db,
        f"SELECT delivery_id, at, text, fields FROM decisions WHERE delivery_id IN ({marks}) ORDER BY id",  # noqa: S608
        ids,
        decision,
    )
    correlations = _by_delivery(
        db,
        f"SELECT {CORRELATION_COLUMNS} FROM correlations"  # noqa: S608
        f" WHERE delivery_id IN ({marks}) ORDER BY delivery_id, position",
        ids,
        correlation,
    )
    actions = _by_delivery(
        db,
        f"SELECT {ACTION_COLUMNS} FROM actions WHERE delivery_id IN ({marks}) ORDER BY id",  # noqa: S608
        ids,
        action,
        owner_column=1,
    )
    found = {
        row[0]: Delivery(
            **summary_fields(row),
            body=bytes(row[18]),
            authenticated_by=row[19],
            decisions=decisions[row[0]],
            correlations=correlations[row[0]],
            actions=actions[row[0]],
        )
        for row in rows
    }
    return [found[i] for i in ids if i in found]


def _by_delivery(
    db: Db, sql: str, ids: list[int], make: Callable[[Sequence[Any]], T], *, owner_column: int = 0
) -> dict[int, tuple[T, ...]]:
    """A delivery's records from `sql`, in its order; `owner_column`: where the row names its delivery."""
    found: dict[int, list[T]] = {i: [] for i in ids}
    for row in db.execute(sql, ids).fetchall():
        found[row[owner_column]].append(make(row))
    return {delivery_id: tuple(records) for delivery_id, records in found.items()}
