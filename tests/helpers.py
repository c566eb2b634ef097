"""Helpers shared by tests: the real app on a loopback port, a config with its secret files,
Airflow instances with credential files, and a watch over every process for a leaked secret."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from receiver.airflow import RequestObserver
from receiver.app import Background, build_app
from receiver.config import AirflowInstance, Config, parse_config
from receiver.journal import Journal
from receiver.metrics import Metrics
from receiver.readiness import ReadinessChecks
from tests.flux_replay import flux_headers


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


HMAC_KEY = b"s3cr3t-hmac-token"
BEARER_TOKEN = "bearer-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


@dataclass
class Service:
    """The app listening on 127.0.0.1, a client session, and what it writes to."""

    url: str
    session: aiohttp.ClientSession
    journal: Journal
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
    journal: Journal,
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


Calls = list[tuple[str, str, str]]
"""What an Airflow client reported through `on_request`: (instance, method label, status label)."""


def recorder(calls: Calls) -> RequestObserver:
    """An `on_request` observer that appends to `calls`."""

    def on_request(instance: str, method: str, status: str, seconds: float) -> None:
        assert seconds >= 0
        calls.append((instance, method, status))

    return on_request


def login_instance(url: str, tmp_path: Path, username: str, password: str, **extra: Any) -> AirflowInstance:
    """An Airflow instance that logs in with `username` and `password`, written to files under tmp_path."""
    (tmp_path / f"{username}.user").write_text(f"{username}\n")
    (tmp_path / f"{username}.password").write_text(f"{password}\n")
    return AirflowInstance(
        url=url,
        username_file=tmp_path / f"{username}.user",
        password_file=tmp_path / f"{username}.password",
        **extra,
    )


def token_instance(url: str, tmp_path: Path, token: str, **extra: Any) -> AirflowInstance:
    """An Airflow instance with a static token, written to a file under tmp_path."""
    (tmp_path / "token").write_text(token)
    return AirflowInstance(url=url, token_file=tmp_path / "token", **extra)


class ProcessWatch:
    """Scans every process's argv and environment until stopped, looking for a secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.leaks: list[str] = []
        self.seen_git_http = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                for part in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{part}").read_bytes()
                    except OSError:
                        continue
                    if self.secret in data:
                        self.leaks.append(f"{pid}/{part}")
                    if part == "cmdline" and b"remote-http" in data:
                        self.seen_git_http = True
            time.sleep(0.002)
