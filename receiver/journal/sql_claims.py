"""Heads and claims: which delivery of each Flux object is worked on, by whom, and until when.

Only an object's head (its oldest unfinished delivery) is ever claimed, and a head has at most
one owner; every change of a delivery's state that finishes it moves the head on (sql.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from receiver.journal.base import (
    FINAL_STATES,
    IN_PROGRESS_STATES,
    PENDING_STATES,
    UNFINISHED_SQL,
    Delivery,
    DeliveryState,
)
from receiver.journal.sql_lanes import SqlLanes
from receiver.journal.sql_rows import Db, epoch, epoch_now, insert_decision, load_deliveries, placeholders

log = structlog.get_logger(__name__)

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


class SqlClaims(SqlLanes):
    """Claiming heads, renewing and recovering claims, and the state changes that move heads."""

    async def recover_interrupted(self) -> int:
        """One replica (no lease): everything in progress was this process's, before a restart.
        With leases (several replicas) a stale claim is taken over by `claim` instead."""
        if self.lease_seconds is not None:
            return 0

        def write(db: Db) -> int:
            interrupted = [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM deliveries WHERE state IN ({placeholders(IN_PROGRESS_STATES)})",  # noqa: S608
                    [s.value for s in IN_PROGRESS_STATES],
                ).fetchall()
            ]
            now = epoch_now()
            for delivery_id in interrupted:
                db.execute(
                    "UPDATE deliveries SET state = ?, next_attempt_at = NULL, updated_at = ? WHERE id = ?",
                    (DeliveryState.RECEIVED.value, now, delivery_id),
                )
                insert_decision(db, delivery_id, RESTART_NOTE, {})
            db.execute(_RELEASE_HEADS + " WHERE owner IS NOT NULL", (now,))
            return len(interrupted)

        return await self._write(write)

    async def claim(self, now: datetime, limit: int, busy_objects: frozenset[str]) -> Sequence[Delivery]:
        def write(db: Db) -> list[Delivery]:
            wanted = limit + len(busy_objects)
            taken: list[tuple[str, int, str | None]] = []
            if self.lease_seconds is not None:
                taken += db.execute(STALE_HEADS + self._skip_locked, (epoch_now(), wanted)).fetchall()
            taken += db.execute(DUE_HEADS + self._skip_locked, (epoch(now), wanted)).fetchall()
            chosen = [row for row in taken if row[0] not in busy_objects][:limit]
            if not chosen:
                return []
            stamp = epoch_now()
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
                    insert_decision(
                        db,
                        delivery_id,
                        f"taken over from replica {previous}, whose claim was not renewed;"
                        " finished actions are kept",
                        {"previous_owner": previous},
                    )
            return load_deliveries(db, [delivery_id for _, delivery_id, _ in chosen])

        return await self._write(write)

    async def renew_claims(self) -> None:
        """Extend this process's claims (the heartbeat; only meaningful with leases)."""
        if self.lease_seconds is None:
            return
        lease_until = epoch_now() + self.lease_seconds
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
        write = self._state_change(delivery_id, state, next_attempt_at, error, decision)
        await self._write(write, locking=[delivery_id], delivery_id=delivery_id)

    def note_state(self, delivery_id: int, state: DeliveryState) -> None:
        if state not in IN_PROGRESS_STATES:
            raise ValueError(f"only an in-progress state can wait for the next write, not {state}")
        self._note(delivery_id, self._state_change(delivery_id, state, None, None, None))

    def _state_change(
        self,
        delivery_id: int,
        state: DeliveryState,
        next_attempt_at: datetime | None,
        error: str | None,
        decision: str | None,
    ) -> Callable[[Db], None]:
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
            due = None if next_attempt_at is None else epoch(next_attempt_at)
            db.execute(
                "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = COALESCE(?, last_error),"
                " updated_at = ? WHERE id = ?",
                (state.value, due, error, epoch_now(), delivery_id),
            )
            if state in PENDING_STATES and is_head:
                db.execute(_RELEASE_HEADS + " WHERE delivery_id = ?", (due or epoch_now(), delivery_id))
            elif state in FINAL_STATES:
                self._move_head(db, delivery_id, *current[1:4])
            if decision is not None:
                insert_decision(db, delivery_id, decision, {})

        return write

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

    async def replay(self, delivery_ids: Sequence[int], now: datetime) -> list[int]:
        def write(db: Db) -> list[int]:
            replayed = [delivery_id for delivery_id in delivery_ids if _replay_one(db, delivery_id, now)]
            if replayed:
                self._announce_work(db)
            return replayed

        replayed = await self._write(write, locking=delivery_ids)
        if replayed:
            self.work.notify()
        return replayed


def _replay_one(db: Db, delivery_id: int, now: datetime) -> bool:
    """Make one finished delivery pending again; False when it is unknown or unfinished."""
    row = db.execute(
        "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = NULL,"  # noqa: S608
        f" retry_since = ?, updated_at = ? WHERE id = ? AND state IN ({placeholders(FINAL_STATES)})"
        " RETURNING kind || '/' || namespace || '/' || name",
        (DeliveryState.RECEIVED.value, epoch(now), epoch(now), delivery_id, *FINAL_VALUES),
    ).fetchone()
    if row is None:
        return False
    # It becomes the head unless an older one is, or the head is being worked on
    # (then it follows once that one finishes).
    db.execute(
        "INSERT INTO object_heads (object_key, delivery_id, due_at) VALUES (?, ?, ?)"
        " ON CONFLICT (object_key) DO UPDATE SET delivery_id = excluded.delivery_id,"
        " due_at = excluded.due_at WHERE object_heads.owner IS NULL"
        " AND object_heads.delivery_id > excluded.delivery_id",
        (row[0], delivery_id, epoch(now)),
    )
    insert_decision(db, delivery_id, "replay requested by an operator", {})
    return True
