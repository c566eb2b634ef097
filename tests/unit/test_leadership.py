"""Singleton work runs only on the leading replica, and the `fluxback_leader` gauge says which."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from receiver.config import Config
from receiver.journal import DeliveryState, Journal, Leadership, while_leading
from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from receiver.readiness import ReadinessChecks
from receiver.service import background_services
from tests.conftest import PostgresDatabase
from tests.helpers import make_config
from tests.unit.test_journal import new_delivery


async def test_singleton_work_starts_when_leading_and_stops_when_not() -> None:
    leadership = Leadership()
    runs: list[str] = []

    async def singleton() -> None:
        runs.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            runs.append("stopped")

    running = asyncio.create_task(while_leading(leadership, singleton))
    await asyncio.sleep(0.05)
    assert runs == []
    leadership.set(True)
    await asyncio.sleep(0.05)
    assert runs == ["started"]
    leadership.set(False)
    await asyncio.sleep(0.05)
    assert runs == ["started", "stopped"]
    leadership.set(True)
    await asyncio.sleep(0.05)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert runs == ["started", "stopped", "started", "stopped"]


def _retention(tmp_path: Path) -> Config:
    return make_config(tmp_path, retention={"max_age_days": 1, "interval_seconds": 0.05})


async def _old_finished(journal: Journal) -> int:
    appended = await journal.append(new_delivery(b"old", received_at=datetime.now(UTC) - timedelta(days=3)))
    await journal.set_state(appended.id, DeliveryState.DONE)
    return appended.id


async def _pruned(journal: Journal, delivery_id: int) -> bool:
    for _ in range(100):
        if await journal.get(delivery_id) is None:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_sqlite_always_leads_and_prunes(tmp_path: Path, journal: SqliteJournal) -> None:
    metrics = Metrics()
    old = await _old_finished(journal)
    retention = background_services(_retention(tmp_path), journal, metrics, ReadinessChecks())[1]
    async with retention:
        assert await _pruned(journal, old)
    assert metrics.registry.get_sample_value("fluxback_leader") == 1


async def test_only_the_leading_postgresql_replica_prunes(tmp_path: Path, postgres: PostgresDatabase) -> None:
    leader, follower = postgres.journal(), postgres.journal()
    await leader.open()
    await asyncio.wait_for(leader.leadership().wait_leading(), 5)
    await follower.open()
    try:
        old = await _old_finished(follower)
        metrics = Metrics()
        async with background_services(_retention(tmp_path), follower, metrics, ReadinessChecks())[1]:
            await asyncio.sleep(0.5)  # ten retention intervals
            assert await follower.get(old) is not None
            assert metrics.registry.get_sample_value("fluxback_leader") == 0
            await leader.close()  # the follower takes over, and with it the singleton work
            await asyncio.wait_for(follower.leadership().wait_leading(), 10)
            assert await _pruned(follower, old)
            assert metrics.registry.get_sample_value("fluxback_leader") == 1
    finally:
        await follower.close()
        await leader.close()
