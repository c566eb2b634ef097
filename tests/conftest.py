"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.journal.sqlite import SqliteJournal


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    """A real SQLite journal in tmp_path, open for the test."""
    store = SqliteJournal(tmp_path / "journal.db")
    await store.open()
    yield store
    await store.close()
