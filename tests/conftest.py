"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from receiver.journal.postgres import PostgresJournal
from receiver.journal.sqlite import SqliteJournal
from receiver.secrets import FileSecret
from tests.postgres_server import PASSWORD, PostgresServer, running_server

TEMPLATE = "fluxback_template"
_databases = itertools.count(1)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    """A real SQLite journal in tmp_path, open for the test."""
    store = SqliteJournal(tmp_path / "journal.db")
    await store.open()
    yield store
    await store.close()


@dataclass(frozen=True)
class PostgresDatabase:
    """A fresh database copied from the migrated template: `url` for the `journal` key."""

    server: PostgresServer
    url: str
    password_file: Path

    def journal(self, **options: float) -> PostgresJournal:
        return PostgresJournal(self.url, password_file=FileSecret(self.password_file), **options)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresServer, Path]]:
    """One PostgreSQL for the session, with a template database the journal has migrated."""
    with running_server(TEMPLATE) as server:
        password_file = tmp_path_factory.mktemp("postgres") / "password"
        password_file.write_text(PASSWORD + "\n")
        migrating = PostgresJournal(server.url(TEMPLATE), password_file=FileSecret(password_file))

        async def migrate() -> None:
            await migrating.open()
            await migrating.close()

        # In a thread of its own: the fixture may be set up from inside a running event loop.
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, migrate()).result()
        yield server, password_file


@pytest.fixture
def postgres(postgres_server: tuple[PostgresServer, Path]) -> Iterator[PostgresDatabase]:
    server, password_file = postgres_server
    name = f"test_{next(_databases)}"
    server.create_database(name, template=TEMPLATE)
    yield PostgresDatabase(server, server.url(name), password_file)
    server.drop_database(name)
