"""Several replicas on one real PostgreSQL: claims, stale takeover, wake-ups, leadership, migrations.

Each "replica" is a PostgresJournal of its own (own pool, own control connection, own
owner name), as two `fluxback serve` processes would have.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import pytest

from receiver.journal import ActionState, DeliveryState, JournalUnavailable, NewDelivery
from receiver.journal.postgres import LEADER_LOCK, PostgresJournal
from receiver.journal.sql_claims import RESTART_NOTE
from receiver.journal.sql_rows import Db
from receiver.journal.sqlite import SqliteJournal
from receiver.secrets import FileSecret
from tests.conftest import PostgresDatabase
from tests.unit.test_journal import T0, new_delivery


@pytest.fixture
async def replicas(postgres: PostgresDatabase) -> AsyncIterator[Callable[..., PostgresJournal]]:
    """Opens replicas on the test's database; all are closed at the end (if still open)."""
    async with AsyncExitStack() as stack:
        opened: list[PostgresJournal] = []

        def replica(**options: float) -> PostgresJournal:
            journal = postgres.journal(**options)
            opened.append(journal)
            return journal

        async def close_all() -> None:
            for journal in opened:
                await journal.close()

        stack.push_async_callback(close_all)
        yield replica


async def test_two_replicas_never_work_on_one_object_at_once_and_keep_its_order(
    replicas: Callable[..., PostgresJournal],
) -> None:
    a, b = replicas(), replicas()
    await a.open()
    await b.open()
    first = await a.append(new_delivery(b"1", name="apps", dedupe="1"))
    second = await b.append(new_delivery(b"2", name="apps", dedupe="2"))
    other = await b.append(new_delivery(b"3", name="infra", dedupe="3"))
    claimed_a, claimed_b = await asyncio.gather(a.claim(T0, 10, frozenset()), b.claim(T0, 10, frozenset()))
    both = [d.id for d in [*claimed_a, *claimed_b]]
    assert sorted(both) == [first.id, other.id]  # never `second` while `first` is in progress
    assert not {d.id for d in claimed_a} & {d.id for d in claimed_b}
    holder = a if first.id in [d.id for d in claimed_a] else b
    await holder.set_state(first.id, DeliveryState.DONE)
    assert [d.id for d in await (b if holder is a else a).claim(T0, 10, frozenset())] == [second.id]


async def test_a_stale_claim_is_taken_over_and_the_late_owner_is_fenced(
    replicas: Callable[..., PostgresJournal],
) -> None:
    stalled, alive = replicas(lease_seconds=0.6), replicas(lease_seconds=0.6)
    await stalled.open()
    await alive.open()
    accepted = await stalled.append(new_delivery(b"x"))
    [taken] = await stalled.claim(T0, 10, frozenset())
    await stalled.begin_action(taken.id, "mark:x", "mark_task", {"dag_id": "d"})
    await stalled.finish_action("mark:x", ActionState.DONE, "task marked")
    for task in stalled._tasks:  # the replica hangs: no heartbeat renews its claim any more
        task.cancel()
    assert await alive.claim(T0, 10, frozenset()) == []  # not yet stale
    await asyncio.sleep(0.8)
    [again] = await alive.claim(T0, 10, frozenset())
    assert (again.id, again.attempts) == (accepted.id, 2)
    assert "taken over from replica" in again.decisions[-1].text
    # The action record is the fence: the new owner sees what was done and does not repeat it.
    record, created = await alive.begin_action(again.id, "mark:x", "mark_task", {"dag_id": "d"})
    assert not created and record.state is ActionState.DONE
    # The stalled replica wakes up and writes its outcome: it no longer owns the claim, so it is ignored.
    await stalled.set_state(accepted.id, DeliveryState.DEAD, error="late")
    stored = await alive.get(accepted.id)
    assert stored is not None and stored.state is DeliveryState.RESOLVING
    await alive.set_state(accepted.id, DeliveryState.DONE)
    stored = await alive.get(accepted.id)
    assert stored is not None and stored.state is DeliveryState.DONE and stored.last_error is None


async def test_a_live_claim_is_renewed_and_never_taken_over(replicas: Callable[..., PostgresJournal]) -> None:
    busy, other = replicas(lease_seconds=0.6), replicas(lease_seconds=0.6)
    await busy.open()
    await other.open()
    await busy.append(new_delivery(b"long"))
    assert len(await busy.claim(T0, 10, frozenset())) == 1
    await asyncio.sleep(1.5)  # longer than the lease: the heartbeat renews it meanwhile
    assert await other.claim(T0, 10, frozenset()) == []


async def test_work_journaled_by_one_replica_wakes_the_other(
    replicas: Callable[..., PostgresJournal],
) -> None:
    ingest, worker = replicas(), replicas()
    await ingest.open()
    await worker.open()
    await asyncio.sleep(0.2)  # the worker's control connection is listening
    woken = asyncio.create_task(worker.wait_for_work(30))
    await ingest.append(new_delivery(b"news"))
    assert await asyncio.wait_for(woken, 5)


async def test_one_leader_at_a_time_and_a_successor_when_it_goes(
    replicas: Callable[..., PostgresJournal], postgres: PostgresDatabase
) -> None:
    a, b = replicas(leader_retry_seconds=0.2), replicas(leader_retry_seconds=0.2)
    await a.open()
    await asyncio.wait_for(a.leadership().wait_leading(), 5)
    changes: list[bool] = []
    await b.open()
    b.leadership().on_change(changes.append)
    await asyncio.sleep(0.6)
    assert a.leadership().is_leader and not b.leadership().is_leader
    # The leader's session dies (as when its pod is killed or partitioned): another replica leads.
    with postgres.server.admin() as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND objsubid = 1",
            (LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF),
        ).fetchall()
    assert ended == [(True,)]
    await asyncio.wait_for(b.leadership().wait_leading(), 5)
    await asyncio.wait_for(a.leadership().wait_following(), 5)
    assert changes[:2] == [False, True]
    await b.close()
    await asyncio.wait_for(a.leadership().wait_leading(), 5)


async def test_replicas_starting_together_apply_the_migrations_once(postgres: PostgresDatabase) -> None:
    fresh = "fresh_" + postgres.url.rsplit("/", 1)[1]
    postgres.server.create_database(fresh)
    try:
        url = postgres.url.rsplit("/", 1)[0] + "/" + fresh
        journals = [PostgresJournal(url, password_file=FileSecret(postgres.password_file)) for _ in range(3)]
        await asyncio.gather(*(j.open() for j in journals))
        await asyncio.gather(*(j.close() for j in journals))
        with postgres.server.admin(fresh) as db:
            versions = [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == [1]
    finally:
        postgres.server.drop_database(fresh)


async def test_the_migrated_schema_is_the_one_the_shared_sql_expects(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    """The shared SQL runs on both: tables, columns, nullability and indexes must agree."""
    sqlite_journal = SqliteJournal(tmp_path / "journal.db")
    await sqlite_journal.open()
    await sqlite_journal.close()
    with sqlite3.connect(tmp_path / "journal.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        sqlite_schema = {
            (table, column, bool(notnull or pk))
            for table in tables
            if table != "sqlite_sequence"
            for _, column, _, notnull, _, pk in db.execute(f"PRAGMA table_info({table})")
        }
        sqlite_indexes = {
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        }
    with postgres.server.admin(postgres.url.rsplit("/", 1)[1]) as db:
        postgres_schema = {
            (table, column, nullable == "NO")
            for table, column, nullable in db.execute(
                "SELECT table_name, column_name, is_nullable FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            )
        }
        postgres_indexes = {
            r[0]
            for r in db.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                " AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'"
            )
        }
    assert postgres_schema == sqlite_schema
    assert postgres_indexes == sqlite_indexes


async def test_a_wrong_password_or_a_missing_server_is_unavailable_and_says_so(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    journal = PostgresJournal(postgres.url, password_file=FileSecret(wrong))
    with pytest.raises(JournalUnavailable, match="password authentication failed") as raised:
        await journal.open()
    assert "not-the-password" not in str(raised.value)
    nowhere = PostgresJournal("postgresql://fluxback@127.0.0.1:1/none")
    with pytest.raises(JournalUnavailable, match="cannot open journal"):
        await nowhere.open()


async def test_work_in_progress_on_postgresql_is_left_to_its_lease(
    replicas: Callable[..., PostgresJournal],
) -> None:
    """A restarting replica must not reset other replicas' claims (SQLite's one replica does)."""
    working, restarting = replicas(), replicas()
    await working.open()
    await restarting.open()
    await working.append(new_delivery(b"busy"))
    [claimed] = await working.claim(T0, 10, frozenset())
    assert await restarting.recover_interrupted() == 0
    stored = await restarting.get(claimed.id)
    assert stored is not None and stored.state is DeliveryState.RESOLVING
    assert RESTART_NOTE not in [d.text for d in stored.decisions]


async def test_a_batch_of_the_workers_writes_that_cannot_commit_fails_every_write_and_keeps_none(
    replicas: Callable[..., PostgresJournal],
) -> None:
    journal = replicas()
    await journal.open()
    ids = [
        (await journal.append(new_delivery(f"{i}".encode(), name=f"o{i}", dedupe=f"{i}"))).id
        for i in range(8)
    ]
    await journal.claim(T0, 8, frozenset())
    # One write of the batch loses the connection (as when PostgreSQL restarts mid-commit).
    lost = journal._write(lambda db: db.execute("SELECT pg_terminate_backend(pg_backend_pid())"))
    outcomes = await asyncio.gather(
        *(journal.set_state(i, DeliveryState.DONE, decision="done") for i in ids[:4]),
        lost,
        *(journal.add_decision(i, "noted") for i in ids[4:]),
        return_exceptions=True,
    )
    assert all(isinstance(o, JournalUnavailable) for o in outcomes)
    for delivery_id in ids:
        stored = await journal.get(delivery_id)
        assert stored is not None and stored.state is DeliveryState.RESOLVING and stored.decisions == ()
    await asyncio.gather(*(journal.set_state(i, DeliveryState.DONE) for i in ids))  # a new connection serves
    assert (await journal.depth())[DeliveryState.DONE] == 8


async def test_a_write_the_server_refuses_fails_alone_even_when_its_answer_is_never_read(
    replicas: Callable[..., PostgresJournal],
) -> None:
    """The worker's batches are pipelined: a statement's error may only arrive after the write
    sent more; it must still fail that write alone, undo all of it, and leave the others be."""
    journal = replicas()
    await journal.open()
    ids = [
        (await journal.append(new_delivery(f"{i}".encode(), name=f"o{i}", dedupe=f"{i}"))).id
        for i in range(6)
    ]

    def refused(db: Db) -> None:
        db.execute("UPDATE deliveries SET last_error = 'half' WHERE id = ?", (ids[0],))
        db.execute(
            "INSERT INTO decisions (delivery_id, at, text, fields) VALUES (?, 0, NULL, '{}')", (ids[0],)
        )
        db.execute("UPDATE deliveries SET last_error = 'all' WHERE id = ?", (ids[0],))

    outcomes = await asyncio.gather(
        *(journal.add_decision(i, "before") for i in ids[:3]),
        journal._write(refused),
        journal._write(lambda db: db.execute("SELECT 1").fetchone()),  # reads right after it
        *(journal.add_decision(i, "after") for i in ids[3:]),
        journal.begin_action(ids[1], "mark:1", "mark_task", {}),
        journal.begin_action(ids[1], "mark:1", "mark_task", {}),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], JournalUnavailable)
    assert outcomes[4] == (1,)
    assert [o for i, o in enumerate(outcomes[:8]) if i not in (3, 4)] == [None] * 6
    assert [created for _, created in outcomes[8:]] == [True, False]  # type: ignore[misc]
    untouched = await journal.get(ids[0])
    assert untouched is not None and untouched.last_error is None
    assert [d.text for d in untouched.decisions] == ["before"]
    later = await journal.get(ids[5])
    assert later is not None and [d.text for d in later.decisions] == ["after"]


async def test_replicas_draining_while_events_arrive_keep_order_fence_and_never_deadlock(
    replicas: Callable[..., PostgresJournal],
) -> None:
    """Both replicas append, claim and finish at once, their writes in shared batches that each
    lock several objects: every delivery is finished once, in order per object, without errors."""
    a, b = replicas(), replicas()
    await a.open()
    await b.open()
    events = [new_delivery(f"{i}".encode(), name=f"o{i % 12}", dedupe=f"{i}") for i in range(240)]
    claimed: list[tuple[str, int]] = []

    async def ingest(journal: PostgresJournal, share: Sequence[NewDelivery]) -> None:
        for start in range(0, len(share), 10):
            await asyncio.gather(*(journal.append(d) for d in share[start : start + 10]))

    async def work(journal: PostgresJournal) -> None:
        idle = 0
        while idle < 20:
            taken = await journal.claim(T0 + timedelta(days=1), 8, frozenset())
            idle = 0 if taken else idle + 1
            claimed.extend((d.name, d.id) for d in taken)
            await asyncio.gather(
                *(journal.add_decision(d.id, f"worked by {journal.owner}") for d in taken),
                *(journal.set_state(d.id, DeliveryState.DONE) for d in taken),
            )
            await asyncio.sleep(0 if taken else 0.02)

    await asyncio.gather(ingest(a, events[0::2]), ingest(b, events[1::2]), work(a), work(b))
    assert (await a.depth())[DeliveryState.DONE] == 240
    assert sorted(i for _, i in claimed) == list(range(1, 241))  # each claimed once
    for name in {n for n, _ in claimed}:
        in_claim_order = [i for n, i in claimed if n == name]
        assert in_claim_order == sorted(in_claim_order)
    for delivery_id in (1, 120, 240):
        stored = await a.get(delivery_id)
        assert stored is not None and stored.attempts == 1 and len(stored.decisions) == 1


async def test_a_stale_owners_write_in_a_batch_is_fenced_and_its_neighbours_commit(
    replicas: Callable[..., PostgresJournal],
) -> None:
    stalled, alive = replicas(lease_seconds=0.6), replicas(lease_seconds=0.6)
    await stalled.open()
    await alive.open()
    lost = await stalled.append(new_delivery(b"lost", name="lost", dedupe="lost"))
    for task in stalled._tasks:  # no heartbeat: its claims go stale
        task.cancel()
    await stalled.claim(T0, 10, frozenset())
    await asyncio.sleep(0.8)
    [taken] = await alive.claim(T0, 10, frozenset())
    kept = await stalled.append(new_delivery(b"kept", name="kept", dedupe="kept"))
    [mine] = await stalled.claim(T0, 10, frozenset())
    await asyncio.gather(
        stalled.set_state(lost.id, DeliveryState.DEAD, error="late", decision="too late"),
        stalled.set_state(mine.id, DeliveryState.DONE, decision="finished"),
    )
    assert (taken.id, mine.id) == (lost.id, kept.id)
    late = await alive.get(lost.id)
    assert late is not None and late.state is DeliveryState.RESOLVING and late.last_error is None
    assert "too late" not in [d.text for d in late.decisions]
    finished = await alive.get(kept.id)
    assert finished is not None and finished.state is DeliveryState.DONE
    assert finished.decisions[-1].text == "finished"
