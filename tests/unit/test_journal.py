"""Both journals, SQLite and PostgreSQL, against the real thing: the same suite for the same rules.

Dedupe, per-object claiming, actions, retention and replay run on both backends; what only
one of them has (a file's schema version, several replicas on one database) follows below.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from receiver.journal import (
    ActionState,
    DeliveryFilter,
    DeliveryState,
    JournalUnavailable,
    NewDelivery,
)
from receiver.journal.base import Correlation
from receiver.journal.migrations import MIGRATIONS
from receiver.journal.sql import SqlJournal
from receiver.journal.sql_claims import DUE_HEADS, NEXT_UNFINISHED
from receiver.journal.sql_rows import Db, epoch
from receiver.journal.sqlite import SqliteJournal
from tests.conftest import PostgresDatabase

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def new_delivery(
    body: bytes,
    *,
    name: str = "apps",
    revision: str | None = "main@sha1:" + "a" * 40,
    outcome: str = "success",
    dedupe: str | None = "key-1",
    received_at: datetime = T0,
) -> NewDelivery:
    return NewDelivery(
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        received_at=received_at,
        kind="Kustomization",
        namespace="flux-system",
        name=name,
        reason="ReconciliationSucceeded",
        severity="info",
        outcome=outcome,
        revision=revision,
        commit=None if revision is None else revision[-40:],
        dedupe_key=dedupe,
        authenticated_by="hmac",
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlJournal]:
    if request.param == "sqlite":
        journal: SqlJournal = SqliteJournal(tmp_path / "state" / "journal.db")
    else:
        database: PostgresDatabase = request.getfixturevalue("postgres")
        journal = database.journal()
    await journal.open()
    yield journal
    await journal.close()


async def test_same_body_is_one_entry(journal: SqlJournal) -> None:
    first = await journal.append(new_delivery(b'{"a":1}'))
    again = await journal.append(new_delivery(b'{"a":1}'))
    assert again.id == first.id and again.duplicate
    assert sum((await journal.depth()).values()) == 1


async def test_same_object_revision_outcome_is_a_recorded_duplicate(journal: SqlJournal) -> None:
    first = await journal.append(new_delivery(b'{"heartbeat":1}'))
    second = await journal.append(new_delivery(b'{"heartbeat":2}'))
    assert not first.duplicate
    assert second.duplicate and second.duplicate_of == first.id and second.id != first.id
    stored = await journal.get(second.id)
    assert stored is not None
    assert stored.state is DeliveryState.DONE and stored.duplicate_of == first.id
    assert "duplicate of delivery" in stored.decisions[0].text
    claimed = await journal.claim(T0, 10, frozenset())
    assert [d.id for d in claimed] == [first.id]


async def test_claim_is_sequential_per_object_and_parallel_across(journal: SqlJournal) -> None:
    a1 = await journal.append(new_delivery(b"a1", name="a", dedupe="a1"))
    a2 = await journal.append(new_delivery(b"a2", name="a", dedupe="a2"))
    b1 = await journal.append(new_delivery(b"b1", name="b", dedupe="b1"))
    claimed = await journal.claim(T0, 10, frozenset())
    assert [d.id for d in claimed] == [a1.id, b1.id]
    assert all(d.state is DeliveryState.RESOLVING and d.attempts == 1 for d in claimed)
    # a2 waits while a1 is in progress, and while a1 waits for its retry.
    assert await journal.claim(T0, 10, frozenset()) == []
    await journal.set_state(a1.id, DeliveryState.FAILED, next_attempt_at=T0 + timedelta(minutes=5), error="x")
    assert await journal.claim(T0, 10, frozenset()) == []
    retried = await journal.claim(T0 + timedelta(minutes=5), 10, frozenset())
    assert [(d.id, d.attempts, d.last_error) for d in retried] == [(a1.id, 2, "x")]
    await journal.set_state(a1.id, DeliveryState.DONE)
    assert [d.id for d in await journal.claim(T0, 10, frozenset())] == [a2.id]


async def test_busy_objects_and_limit_are_respected(journal: SqlJournal) -> None:
    await journal.append(new_delivery(b"a", name="a", dedupe="a"))
    b = await journal.append(new_delivery(b"b", name="b", dedupe="b"))
    await journal.append(new_delivery(b"c", name="c", dedupe="c"))
    claimed = await journal.claim(T0, 1, frozenset({"Kustomization/flux-system/a"}))
    assert [d.id for d in claimed] == [b.id]


async def test_restart_recovers_interrupted_work_and_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path)
    await journal.open()
    accepted = await journal.append(new_delivery(b"x"))
    await journal.claim(T0, 10, frozenset())
    await journal.begin_action(accepted.id, "mark:1", "mark_task", {"dag_id": "d"})
    await journal.close()

    reopened = SqliteJournal(path)
    await reopened.open()
    assert await reopened.recover_interrupted() == 1
    stored = await reopened.get(accepted.id)
    assert stored is not None and stored.state is DeliveryState.RECEIVED
    assert [a.state for a in stored.actions] == [ActionState.STARTED]
    assert "interrupted by a restart" in stored.decisions[-1].text
    await reopened.close()


async def test_actions_are_keyed_once(journal: SqlJournal) -> None:
    first = await journal.append(new_delivery(b"1", dedupe="1"))
    second = await journal.append(new_delivery(b"2", dedupe="2"))
    record, created = await journal.begin_action(first.id, "trigger:x", "trigger_dag", {"dag_id": "x"})
    assert created and record.state is ActionState.STARTED and record.attempts == 1
    await journal.finish_action("trigger:x", ActionState.DONE, "dag run created")
    again, created_again = await journal.begin_action(second.id, "trigger:x", "trigger_dag", {"dag_id": "x"})
    assert not created_again
    assert (again.state, again.result, again.delivery_id) == (ActionState.DONE, "dag run created", first.id)


async def test_filters(journal: SqlJournal) -> None:
    sha = "b" * 40
    one = await journal.append(new_delivery(b"1", revision=f"main@sha1:{sha}", dedupe="1"))
    await journal.append(new_delivery(b"2", name="other", revision="1.0.0", dedupe="2"))
    await journal.set_correlations(
        one.id,
        [Correlation(commit=sha, committed_at=T0, subject="s", dag_id="deploy", run_id="r", verdict="v")],
    )
    by_full = await journal.list(DeliveryFilter(revision=f"main@sha1:{sha}"))
    by_short = await journal.list(DeliveryFilter(revision=sha[:12]))
    by_object = await journal.list(DeliveryFilter(object_key="Kustomization/flux-system/other"))
    by_dag = await journal.list(DeliveryFilter(dag_id="deploy"))
    by_state = await journal.list(DeliveryFilter(state=DeliveryState.DEAD))
    assert [d.id for d in by_full] == [one.id] == [d.id for d in by_short] == [d.id for d in by_dag]
    assert [d.name for d in by_object] == ["other"]
    assert by_state == []
    stored = await journal.get(one.id)
    assert stored is not None and stored.correlations[0].dag_id == "deploy"
    # A commit the delivery made live, under a later one, finds it too.
    await journal.set_correlations(
        one.id,
        [
            Correlation(commit=sha, committed_at=T0, subject="s"),
            Correlation(commit="c" * 40, committed_at=T0, subject="older"),
        ],
    )
    by_made_live = await journal.list(DeliveryFilter(revision="c" * 12))
    assert [d.id for d in by_made_live] == [one.id]


async def test_object_state_replay_and_prune(journal: SqlJournal) -> None:
    key = "Kustomization/flux-system/apps"
    assert (await journal.object_state(key)).last_applied is None
    await journal.set_applied(key, "a" * 40, 7)
    await journal.set_failed(key, "c" * 40, 7)
    await journal.set_applied(key, "0" * 40, 3)  # a replayed older delivery does not move it back
    await journal.set_failed(key, "0" * 40, 3)
    state = await journal.object_state(key)
    assert (state.last_applied, state.last_failed) == ("a" * 40, "c" * 40)
    await journal.set_applied(key, "b" * 40, 8)
    assert (await journal.object_state(key)).last_applied == "b" * 40

    old = await journal.append(new_delivery(b"old", dedupe="old", received_at=T0 - timedelta(days=40)))
    fresh = await journal.append(new_delivery(b"new", dedupe="new", received_at=T0))
    pending = await journal.append(
        new_delivery(b"p", name="x", dedupe="p", received_at=T0 - timedelta(days=40))
    )
    for delivery_id in (old.id, fresh.id):
        await journal.set_state(delivery_id, DeliveryState.DEAD)
    assert await journal.replay([fresh.id, 999], T0) == [fresh.id]
    replayed = await journal.get(fresh.id)
    assert replayed is not None and replayed.state is DeliveryState.RECEIVED and replayed.attempts == 0

    assert await journal.prune(T0 - timedelta(days=30)) == 1
    assert await journal.get(old.id) is None
    assert await journal.get(pending.id) is not None  # unfinished work is never pruned
    assert (await journal.object_state(key)).last_applied == "b" * 40


async def test_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path)
    await journal.open()
    await journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))
    newer = SqliteJournal(path)
    with pytest.raises(JournalUnavailable, match="newer than this Fluxback"):
        await newer.open()


async def test_unwritable_journal_is_unavailable(tmp_path: Path) -> None:
    blocked = tmp_path / "journal.db"
    blocked.mkdir()  # a folder where the file should be
    with pytest.raises(JournalUnavailable):
        await SqliteJournal(blocked).open()
    closed = SqliteJournal(tmp_path / "other.db")
    await closed.open()
    await closed.close()
    with pytest.raises(JournalUnavailable):
        await closed.append(new_delivery(b"late"))


async def test_one_serving_process_per_sqlite_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    serving = SqliteJournal(path, serving=True)
    await serving.open()
    second = SqliteJournal(path, serving=True)
    with pytest.raises(
        JournalUnavailable, match=rf"already uses the SQLite journal at {path} \(pid {os.getpid()}\)"
    ):
        await second.open()
    beside = SqliteJournal(path)  # what `fluxback deliveries` and `replay` open
    await beside.open()
    assert (await beside.append(new_delivery(b"from the CLI"))).id == 1
    await beside.close()
    await serving.close()
    after = SqliteJournal(path, serving=True)  # closing released the lock
    await after.open()
    assert (await after.get(1)) is not None
    await after.close()


async def test_a_return_to_an_earlier_revision_is_news_but_a_heartbeat_is_not(journal: SqlJournal) -> None:
    a1 = await journal.append(new_delivery(b"A once", revision="main@sha1:" + "a" * 40, dedupe="A"))
    b1 = await journal.append(new_delivery(b"B", revision="main@sha1:" + "b" * 40, dedupe="B"))
    a2 = await journal.append(new_delivery(b"A again", revision="main@sha1:" + "a" * 40, dedupe="A"))
    a3 = await journal.append(new_delivery(b"A heartbeat", revision="main@sha1:" + "a" * 40, dedupe="A"))
    progress = await journal.append(new_delivery(b"progress", outcome="progress", dedupe=None))
    a4 = await journal.append(new_delivery(b"A after progress", revision="main@sha1:" + "a" * 40, dedupe="A"))
    assert [r.duplicate for r in (a1, b1, a2)] == [False, False, False]
    assert (a3.duplicate, a3.duplicate_of) == (True, a2.id)
    assert not progress.duplicate
    assert (a4.duplicate, a4.duplicate_of) == (True, a2.id)


async def test_pruning_keeps_action_keys_and_replay_restarts_the_retry_budget(journal: SqlJournal) -> None:
    old = await journal.append(new_delivery(b"old", received_at=T0 - timedelta(days=40)))
    await journal.begin_action(old.id, "asset:x", "asset_event", {"uri": "x"})
    await journal.finish_action("asset:x", ActionState.DONE, "asset event 1 created")
    await journal.set_state(old.id, DeliveryState.DEAD)
    assert await journal.prune(T0 - timedelta(days=30)) == 1
    record, created = await journal.begin_action(999, "asset:x", "asset_event", {"uri": "x"})
    assert not created and record.state is ActionState.DONE

    dead = await journal.append(new_delivery(b"dead", dedupe="d", received_at=T0 - timedelta(days=3)))
    await journal.set_state(dead.id, DeliveryState.DEAD)
    before = await journal.get(dead.id)
    assert before is not None and before.retry_since == T0 - timedelta(days=3)
    assert await journal.replay([dead.id], T0) == [dead.id]
    replayed = await journal.get(dead.id)
    assert replayed is not None
    assert (replayed.retry_since, replayed.received_at) == (T0, T0 - timedelta(days=3))
    # Only finished deliveries replay: this one is pending again now.
    assert await journal.replay([dead.id], T0) == []


async def _plan(journal: SqlJournal, sql: str, params: tuple[object, ...]) -> str:
    """The query plan; PostgreSQL is told to avoid table scans, which a tiny table would favour."""

    def explain(db: Db) -> list[Any]:
        if isinstance(journal, SqliteJournal):
            return db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        db.execute("SET LOCAL enable_seqscan = off")
        return db.execute("EXPLAIN " + sql, params).fetchall()

    return "\n".join(str(row[-1]) for row in await journal._read(explain))


async def test_a_claim_reads_only_the_due_heads_whatever_the_backlog(journal: SqlJournal) -> None:
    # A backlog of 1,500 deliveries queued behind the heads of 3 objects (appended concurrently,
    # so in a few shared transactions, in order).
    backlog = [new_delivery(f"{i}".encode(), name=f"o{i % 3}", dedupe=f"{i}") for i in range(1500)]
    await asyncio.gather(*(journal.append(d) for d in backlog))
    heads = await journal.claim(T0, 10, frozenset())
    assert [(d.id, d.name) for d in heads] == [(1, "o0"), (2, "o1"), (3, "o2")]
    await journal.set_state(heads[0].id, DeliveryState.DONE)  # the object's next delivery follows
    assert [d.id for d in await journal.claim(T0, 10, frozenset())] == [4]

    # Both lookups are answered from partial indexes that hold only what is unfinished, so their
    # cost does not grow with the backlog or the history (here: most deliveries long done).
    await journal._write(
        lambda db: db.execute("UPDATE deliveries SET state = 'done' WHERE id BETWEEN 5 AND 1400")
    )
    await journal._write(lambda db: db.execute("ANALYZE"))
    assert "object_heads_due" in await _plan(journal, DUE_HEADS, (epoch(T0), 10))
    assert "deliveries_unfinished" in await _plan(
        journal, NEXT_UNFINISHED, ("Kustomization", "flux-system", "o0")
    )


def _transactions(journal: SqlJournal, lane: str) -> list[Callable[[Db], Any]]:
    """What `journal` runs on `lane` (`_write_appends` or `_write_batch`), one entry a transaction."""
    transactions: list[Callable[[Db], Any]] = []
    run = getattr(journal, lane)

    async def counted(work: Callable[[Db], Any]) -> Any:
        transactions.append(work)
        return await run(work)

    setattr(journal, lane, counted)
    return transactions


async def test_concurrent_appends_commit_together_and_a_bad_event_fails_alone(journal: SqlJournal) -> None:
    transactions = _transactions(journal, "_write_appends")
    good = [new_delivery(f"event {i}".encode(), name=f"o{i}", dedupe=f"{i}") for i in range(40)]
    bad = new_delivery(b"bad", name="bad\ud800", dedupe="bad")  # not encodable: refused by the database
    outcomes = await asyncio.gather(
        *(journal.append(d) for d in [*good[:20], bad, *good[20:]]), return_exceptions=True
    )
    assert isinstance(outcomes[20], JournalUnavailable)
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(accepted) == 40 and len({o.id for o in accepted}) == 40
    assert len(transactions) < 10  # 41 appends, a handful of shared commits
    assert sum((await journal.depth()).values()) == 40  # nothing of the bad one was written


async def test_the_workers_writes_commit_together_and_a_bad_one_is_undone_alone(journal: SqlJournal) -> None:
    transactions = _transactions(journal, "_write_batch")
    ids = [
        (await journal.append(new_delivery(f"{i}".encode(), name=f"o{i}", dedupe=f"{i}"))).id
        for i in range(30)
    ]
    claimed = await journal.claim(T0, 30, frozenset())
    assert len(claimed) == 30
    transactions.clear()
    # The bad write changes the state, then fails on its decision: all of it must be undone.
    bad = journal.set_state(ids[10], DeliveryState.DONE, decision="refused \ud800")
    outcomes = await asyncio.gather(
        *(journal.set_state(i, DeliveryState.DONE, decision=f"done {i}") for i in ids[:10]),
        bad,
        *(journal.set_state(i, DeliveryState.DONE, decision=f"done {i}") for i in ids[11:]),
        *(journal.begin_action(i, f"mark:{i}", "mark_task", {"dag_id": "d"}) for i in ids),
        return_exceptions=True,
    )
    assert isinstance(outcomes[10], JournalUnavailable)
    assert not any(isinstance(o, BaseException) for o in outcomes[:10] + outcomes[11:])
    assert len(transactions) < 10  # 60 writes, a handful of shared commits
    for delivery_id in ids:
        stored = await journal.get(delivery_id)
        assert stored is not None and len(stored.actions) == 1
        if delivery_id == ids[10]:
            assert stored.state is DeliveryState.RESOLVING
            assert [d.text for d in stored.decisions] == []
        else:
            assert stored.state is DeliveryState.DONE
            assert [d.text for d in stored.decisions] == [f"done {delivery_id}"]
    await journal.set_state(ids[10], DeliveryState.DONE)  # the caller tries again; nothing is in its way
    assert (await journal.depth())[DeliveryState.DONE] == 30


async def test_an_append_wakes_the_worker_and_a_duplicate_does_not(journal: SqlJournal) -> None:
    assert not await journal.wait_for_work(0.05)
    waiting = asyncio.create_task(journal.wait_for_work(30))
    await journal.append(new_delivery(b"new"))
    assert await asyncio.wait_for(waiting, 5)
    await journal.append(new_delivery(b"new"))
    assert not await journal.wait_for_work(0.05)
