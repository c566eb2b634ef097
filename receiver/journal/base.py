"""The journal's contract: what ingest writes, what the worker reads and records.

The journal is the durable inbox. An event is answered `202` only after
`append` has committed it, so an accepted event survives a crash. The worker
then moves each delivery through a small state machine and records every
decision and action on it, which is what `/deliveries` shows to operators.

The SQLite implementation is the default (one replica); the PostgreSQL one
(several replicas, `FOR UPDATE SKIP LOCKED`) satisfies the same protocol with
the same rules (sql.py).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from receiver.journal.coordination import Leadership


class DeliveryState(StrEnum):
    """Where a delivery stands.

    received -> resolving -> acting -> done; a temporary failure goes to
    `failed` with a next-attempt time and is taken again; once the retry
    budget is spent it becomes `dead` (a dead letter an operator can replay).
    """

    RECEIVED = "received"
    RESOLVING = "resolving"
    ACTING = "acting"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


PENDING_STATES = (DeliveryState.RECEIVED, DeliveryState.FAILED)
IN_PROGRESS_STATES = (DeliveryState.RESOLVING, DeliveryState.ACTING)
FINAL_STATES = (DeliveryState.DONE, DeliveryState.DEAD)
UNFINISHED_SQL = f"state IN ({', '.join(repr(s.value) for s in (*PENDING_STATES, *IN_PROGRESS_STATES))})"
"""Literal, not bound: it must match the partial index `deliveries_unfinished` for the planners."""


class ActionState(StrEnum):
    STARTED = "started"
    """Recorded before the call: if the process dies now, recovery must check before calling again."""
    DONE = "done"
    ALREADY = "already"
    """Airflow says it was done before (409, terminal task state): nothing to do."""
    PERMANENT_ERROR = "permanent_error"
    TEMPORARY_ERROR = "temporary_error"


LIKE_ESCAPE = "\\"
"""The ESCAPE character of `like_prefix` patterns (SQLite and PostgreSQL both take `ESCAPE '\\'`)."""


def like_prefix(text: str) -> str:
    """A LIKE pattern matching values that start with `text` taken literally: `%` and `_` in a
    query are characters to look for, not wildcards that would match every delivery."""
    escaped = text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%")
    return escaped.replace("_", LIKE_ESCAPE + "_") + "%"


def unapplied_migrations(
    migrations: Sequence[Sequence[str]], current: int, refuse: type[Exception]
) -> list[tuple[int, Sequence[str]]]:
    """The (version, statements) a journal at schema version `current` still needs, oldest first.
    A journal newer than this code is refused with `refuse`, the backend's own database error."""
    if current > len(migrations):
        newest = len(migrations)
        raise refuse(f"journal schema version {current} is newer than this Fluxback ({newest}); upgrade it")
    return list(enumerate(migrations[current:], start=current + 1))


class JournalUnavailable(Exception):
    """The journal cannot commit right now (disk full, locked, database down): answer 503."""


@dataclass(frozen=True, kw_only=True)
class NewDelivery:
    """An authenticated, validated event as ingest hands it to the journal."""

    body: bytes
    body_sha256: str
    """Identity of an exact repeat: the hash of the webhook body, or of the status it came from."""
    received_at: datetime
    kind: str
    namespace: str
    name: str
    reason: str
    severity: str
    outcome: str
    revision: str | None
    commit: str | None
    """The commit the revision names (40 hex, or 12 hex for HelmRelease chart versions)."""
    dedupe_key: str | None
    """Same (object, revision, outcome) means the same key; None when there is nothing to act on."""
    authenticated_by: str
    source: str = "webhook"
    """`webhook` (a Flux notification) or `kubernetes` (a change of the object's status)."""

    @property
    def object_key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AppendResult:
    id: int
    duplicate: bool
    duplicate_of: int | None = None
    """For a semantic duplicate: the delivery that will act (or acted) for this key."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    at: datetime
    text: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Correlation:
    """One commit the event made live, and the Airflow run its trailers name (if any)."""

    commit: str
    committed_at: datetime | None
    subject: str
    dag_id: str | None = None
    run_id: str | None = None
    task_ids: tuple[str, ...] = ()
    map_index: int | None = None
    instance: str | None = None
    verdict: str = ""
    """What Fluxback made of this commit, in an operator's words."""


@dataclass(frozen=True, kw_only=True)
class ActionRecord:
    key: str
    """Idempotency key: the same key is never performed twice."""
    delivery_id: int
    kind: str
    target: Mapping[str, Any]
    state: ActionState
    result: str
    attempts: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliverySummary:
    id: int
    state: DeliveryState
    received_at: datetime
    updated_at: datetime
    kind: str
    namespace: str
    name: str
    reason: str
    severity: str
    outcome: str
    revision: str | None
    commit: str | None
    attempts: int
    next_attempt_at: datetime | None
    duplicate_of: int | None
    last_error: str | None
    retry_since: datetime
    """Receipt, or the last replay: the retry budget's age counts from here."""
    source: str = "webhook"
    """`webhook` or `kubernetes`: which source reported the deploy first."""

    @property
    def object_key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class Delivery(DeliverySummary):
    body: bytes
    authenticated_by: str
    decisions: tuple[Decision, ...] = ()
    correlations: tuple[Correlation, ...] = ()
    actions: tuple[ActionRecord, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DeliveryFilter:
    revision: str | None = None
    """Matches the raw revision, the commit it names, or any commit it made live (full or leading part)."""
    object_key: str | None = None
    """`Kind/namespace/name`."""
    state: DeliveryState | None = None
    dag_id: str | None = None
    limit: int = 100
    before_id: int | None = None
    """For paging: only deliveries with a smaller id."""


@dataclass(frozen=True, kw_only=True)
class ObjectState:
    """What Fluxback last saw applied (success) or fail for one Flux object; never pruned."""

    object_key: str
    last_applied: str | None
    last_failed: str | None


class Journal(Protocol):
    """Durable delivery store; every method commits before it returns."""

    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Prove the journal can commit a write now (readiness)."""

    # ingest
    async def append(self, delivery: NewDelivery) -> AppendResult:
        """Store an event once: the same body again returns the first id with duplicate=True;
        the same dedupe key again is stored as a duplicate that will not be acted on."""

    # reading
    async def get(self, delivery_id: int) -> Delivery | None: ...

    async def list(self, query: DeliveryFilter) -> Sequence[DeliverySummary]: ...

    async def depth(self) -> Mapping[DeliveryState, int]:
        """Number of deliveries in each state."""

    # worker
    async def recover_interrupted(self) -> int:
        """After a restart, put deliveries left in resolving/acting back to received."""

    async def claim(self, now: datetime, limit: int, busy_objects: frozenset[str]) -> Sequence[Delivery]:
        """Take due deliveries: at most one per object, the oldest unfinished one, none for
        `busy_objects`; moves them to resolving and counts the attempt."""

    async def set_state(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        next_attempt_at: datetime | None = None,
        error: str | None = None,
        decision: str | None = None,
    ) -> None:
        """Move the delivery to `state`; `decision`, when given, is recorded in the same commit,
        so nobody sees the new state without the reason for it."""

    async def add_decision(self, delivery_id: int, text: str, **fields: Any) -> None: ...

    def note_decision(self, delivery_id: int, text: str, **fields: Any) -> None:
        """`add_decision` without a round trip of its own: it is written first in the delivery's
        next write (every delivery ends with one, its outcome), in the same commit, all or
        nothing. If that write fails or the process dies first, the note is lost with it and
        the delivery, still unfinished, is done again."""

    def note_state(self, delivery_id: int, state: DeliveryState) -> None:
        """`set_state` to an in-progress state, written like `note_decision`: a state that only
        informs (the delivery's next write, e.g. an action record, makes it durable)."""

    async def set_correlations(self, delivery_id: int, correlations: Sequence[Correlation]) -> None: ...

    async def begin_action(
        self, delivery_id: int, key: str, kind: str, target: Mapping[str, Any]
    ) -> tuple[ActionRecord, bool]:
        """Record an action as started before it is performed.

        Returns the record and whether it is new. An existing record under the key (from
        an earlier attempt or another delivery) tells the caller what already happened."""

    async def finish_action(self, key: str, state: ActionState, result: str) -> None: ...

    async def object_state(self, object_key: str) -> ObjectState: ...

    async def set_applied(self, object_key: str, revision: str, delivery_id: int) -> None:
        """Record `revision` as live, unless a later delivery already recorded another one."""

    async def set_failed(self, object_key: str, revision: str, delivery_id: int) -> None:
        """Record `revision` as failed, unless a later delivery already recorded another one."""

    async def replay(self, delivery_ids: Sequence[int], now: datetime) -> builtins.list[int]:
        """Make finished (done or dead) deliveries pending again with a fresh retry budget;
        returns the ids replayed (unknown and unfinished ones are left alone)."""

    async def prune(self, older_than: datetime) -> int:
        """Delete finished deliveries received before `older_than`; returns how many."""

    # coordination
    async def wait_for_work(self, at_most: float) -> bool:
        """Return True as soon as new work may be due (an event journaled by this or another
        replica, a replay), or False after `at_most` seconds; the worker's wake-up."""

    def leadership(self) -> Leadership:
        """Whether this replica runs singleton work (retention, full re-lists); see `Leadership`."""
