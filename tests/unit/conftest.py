"""Fixtures of the unit tests: the default config and the real app on a loopback port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from receiver.config import Config
from receiver.journal.sqlite import SqliteJournal
from tests.helpers import Service, make_config, running


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def service(config: Config, journal: SqliteJournal) -> AsyncIterator[Service]:
    async with running(config, journal) as svc:
        yield svc


@pytest.fixture
def reset_logging() -> Iterator[None]:
    """Undo `configure_logging`, which changes process-wide state."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level
