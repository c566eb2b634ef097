"""Noted writes on both backends: a decision or an in-progress state that rides on the
delivery's next write, in its commit, before it and all or nothing with it."""

from __future__ import annotations

import pytest

from receiver.journal import DeliveryState, JournalUnavailable
from receiver.journal.sql import SqlJournal
from tests.unit.test_journal import T0, _transactions, new_delivery
from tests.unit.test_journal import journal as journal  # the fixture, on both backends


async def _claimed(journal: SqlJournal, name: str = "apps") -> int:
    appended = await journal.append(new_delivery(name.encode(), name=name, dedupe=name))
    [claimed] = await journal.claim(T0, 1, frozenset())
    assert claimed.id == appended.id
    return appended.id


async def test_notes_are_written_first_in_the_deliverys_next_write(journal: SqlJournal) -> None:
    delivery_id = await _claimed(journal)
    transactions = _transactions(journal, "_write_batch")
    journal.note_decision(delivery_id, "only rules apply", cause="no-repository")
    journal.note_state(delivery_id, DeliveryState.ACTING)
    noted = await journal.get(delivery_id)
    assert noted is not None and noted.state is DeliveryState.RESOLVING and noted.decisions == ()
    await journal.set_state(delivery_id, DeliveryState.DONE, decision="finished")
    assert len(transactions) == 1  # the notes cost no round trip of their own
    stored = await journal.get(delivery_id)
    assert stored is not None and stored.state is DeliveryState.DONE
    assert [d.text for d in stored.decisions] == ["only rules apply", "finished"]
    assert stored.decisions[0].fields == {"cause": "no-repository"}


async def test_the_acting_state_is_durable_with_the_action_record(journal: SqlJournal) -> None:
    delivery_id = await _claimed(journal)
    journal.note_state(delivery_id, DeliveryState.ACTING)
    await journal.begin_action(delivery_id, "mark:1", "mark_task", {"dag_id": "d"})
    stored = await journal.get(delivery_id)
    assert stored is not None and stored.state is DeliveryState.ACTING and len(stored.actions) == 1


async def test_notes_and_the_write_they_ride_on_are_all_or_nothing(journal: SqlJournal) -> None:
    delivery_id = await _claimed(journal)
    journal.note_decision(delivery_id, "only rules apply")
    journal.note_state(delivery_id, DeliveryState.ACTING)
    with pytest.raises(JournalUnavailable):
        await journal.set_state(delivery_id, DeliveryState.DONE, decision="refused \ud800")
    stored = await journal.get(delivery_id)
    assert stored is not None and stored.state is DeliveryState.RESOLVING and stored.decisions == ()
    # Lost with their write: the delivery is still unfinished, and doing it again notes them again.
    await journal.set_state(delivery_id, DeliveryState.DONE, decision="finished")
    stored = await journal.get(delivery_id)
    assert stored is not None and [d.text for d in stored.decisions] == ["finished"]


async def test_notes_wait_for_their_own_delivery(journal: SqlJournal) -> None:
    first = await _claimed(journal, "one")
    second = await _claimed(journal, "two")
    journal.note_decision(first, "noted on one")
    await journal.set_state(second, DeliveryState.DONE, decision="two done")
    one = await journal.get(first)
    assert one is not None and one.decisions == ()
    await journal.add_decision(first, "one goes on")
    one = await journal.get(first)
    assert one is not None and [d.text for d in one.decisions] == ["noted on one", "one goes on"]


async def test_only_an_in_progress_state_can_be_noted(journal: SqlJournal) -> None:
    delivery_id = await _claimed(journal)
    with pytest.raises(ValueError, match="in-progress"):
        journal.note_state(delivery_id, DeliveryState.DONE)
