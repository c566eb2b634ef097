"""Fixtures for tests against real services; the Airflow one starts a real Airflow once per session."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.integration.airflow_harness import AirflowServer, ensure_airflow_venv
from tests.postgres_server import PostgresServer


@pytest.fixture(scope="session")
def airflow(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: tuple[PostgresServer, Path]
) -> Iterator[AirflowServer]:
    """A running Airflow 3.3.2 (≈1 GB of memory, so one per session) on its own database of the
    session's PostgreSQL, stopped completely afterwards.

    While it runs, SIGTERM is turned into KeyboardInterrupt so that a killed test run still tears
    Airflow down instead of leaving its process groups behind.
    """
    postgres, _ = postgres_server
    postgres.create_database("airflow")
    database = postgres.url_with_password("airflow")
    server = AirflowServer(tmp_path_factory.mktemp("airflow"), ensure_airflow_venv(), database=database)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
