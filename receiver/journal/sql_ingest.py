"""Ingest's side of the journal: each event stored once, in group-committed batches on a lane
of their own, and the first unfinished delivery of an object made its head."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from receiver.journal.base import AppendResult, DeliveryState, NewDelivery
from receiver.journal.batching import GroupCommit
from receiver.journal.sql_lanes import SqlLanes
from receiver.journal.sql_rows import Db, epoch, epoch_now, insert_decision


class SqlIngest(SqlLanes):
    """`append`, batched with the appends that arrive while a batch commits."""

    def __init__(self) -> None:
        super().__init__()
        self._appends: GroupCommit[NewDelivery, AppendResult] = GroupCommit(self._commit_appends)

    async def append(self, delivery: NewDelivery) -> AppendResult:
        return await self._appends.submit(delivery)

    async def _commit_appends(self, deliveries: Sequence[NewDelivery]) -> Sequence[AppendResult | Exception]:
        outcomes = await self._write_appends(functools.partial(self._append_batch, deliveries=deliveries))
        if any(isinstance(o, AppendResult) and not o.duplicate for o in outcomes):
            self.work.notify()
        return outcomes

    def _append_batch(self, db: Db, deliveries: Sequence[NewDelivery]) -> list[AppendResult | Exception]:
        self._lock_objects(db, {d.object_key for d in deliveries})
        outcomes = self.each_in_savepoint(db, deliveries, append_one)
        if any(isinstance(o, AppendResult) and not o.duplicate for o in outcomes):
            self._announce_work(db)
        return outcomes


def append_one(db: Db, delivery: NewDelivery) -> AppendResult:
    """Store one event: the same body again answers with the first id; an event that repeats
    its object's latest one is stored as a finished duplicate, never acted on."""
    row = db.execute(
        "SELECT id, duplicate_of FROM deliveries WHERE body_sha256 = ?", (delivery.body_sha256,)
    ).fetchone()
    if row is not None:
        return AppendResult(row[0], True, row[1])
    original = _repeated(db, delivery)
    new_id = _insert_delivery(db, delivery, duplicate_of=original)
    if original is not None:
        insert_decision(
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
            (delivery.object_key, new_id, epoch(delivery.received_at)),
        )
    return AppendResult(new_id, original is not None, original)


def _repeated(db: Db, delivery: NewDelivery) -> int | None:
    """The delivery this one repeats, by its dedupe key, if any."""
    if delivery.dedupe_key is None:
        return None
    # Only the object's latest event that could act counts: a heartbeat repeats it,
    # while a return to an earlier revision after another one is news again.
    latest = db.execute(
        "SELECT id, dedupe_key FROM deliveries WHERE kind = ? AND namespace = ? AND name = ?"
        " AND duplicate_of IS NULL AND dedupe_key IS NOT NULL ORDER BY id DESC LIMIT 1",
        (delivery.kind, delivery.namespace, delivery.name),
    ).fetchone()
    return int(latest[0]) if latest and latest[1] == delivery.dedupe_key else None


def _insert_delivery(db: Db, delivery: NewDelivery, *, duplicate_of: int | None) -> int:
    """The new row's id; a duplicate is done from the start."""
    state = DeliveryState.DONE if duplicate_of is not None else DeliveryState.RECEIVED
    received = epoch(delivery.received_at)
    return int(
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
                epoch_now(),
                delivery.kind,
                delivery.namespace,
                delivery.name,
                delivery.reason,
                delivery.severity,
                delivery.outcome,
                delivery.revision,
                delivery.commit,
                delivery.dedupe_key,
                duplicate_of,
                state.value,
                delivery.authenticated_by,
                delivery.source,
            ),
        ).fetchone()[0]
    )
