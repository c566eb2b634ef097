"""Shared fixtures: a real SQLite journal in tmp_path and the real app on a loopback port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer

from receiver.app import Background, build_app
from receiver.config import Config, parse_config
from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from receiver.readiness import ReadinessChecks
from tests.flux_replay import flux_headers

HMAC_KEY = b"s3cr3t-hmac-token"
BEARER_TOKEN = "bearer-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


@dataclass
class Service:
    """The app listening on 127.0.0.1, a client session, and what it writes to."""

    url: str
    session: aiohttp.ClientSession
    journal: SqliteJournal
    metrics: Metrics

    async def post_event(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """POST to /flux/events, signed with HMAC_KEY unless `headers` are given."""
        sent = headers if headers is not None else flux_headers(body, hmac_key=HMAC_KEY)
        async with self.session.post(f"{self.url}/flux/events", data=body, headers=sent) as response:
            return response.status, await response.json(), dict(response.headers)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}{path}", **kwargs) as response:
            return response.status, await response.json()


def write_secret(path: Path, value: bytes) -> Path:
    path.write_bytes(value)
    return path


def make_config(tmp_path: Path, *, webhook: dict[str, Any] | None = None, **raw: Any) -> Config:
    """A Config like the YAML file would give, with secrets written under tmp_path.

    Defaults: an HMAC key, a bearer token and an admin token. `webhook` entries are
    merged into the webhook section; other `raw` keys replace top-level sections.
    """
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    tree: dict[str, Any] = {
        "journal": f"sqlite://{tmp_path}/journal.db",
        "webhook": {
            "hmac_keys": [str(write_secret(secrets / "hmac", HMAC_KEY + b"\n"))],
            "bearer_tokens": [str(write_secret(secrets / "bearer", BEARER_TOKEN.encode() + b"\n"))],
        },
        "admin_tokens": [str(write_secret(secrets / "admin", ADMIN_TOKEN.encode()))],
    }
    tree["webhook"].update(webhook or {})
    tree.update(raw)
    return parse_config(tree, "<test>", environ={})


@asynccontextmanager
async def running(
    config: Config,
    journal: SqliteJournal,
    *,
    background: Sequence[Background] = (),
    metrics: Metrics | None = None,
    readiness: ReadinessChecks | None = None,
) -> AsyncIterator[Service]:
    metrics = metrics or Metrics()
    app = build_app(config, journal, metrics=metrics, background=background, readiness=readiness)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Service(str(server.make_url("")).rstrip("/"), session, journal, metrics)
    finally:
        await server.close()


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
