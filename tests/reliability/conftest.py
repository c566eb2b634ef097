"""Fluxback as a real process (`python -m receiver serve`) on a real socket, for the reliability suite.

Every server runs with the known secret values below. When a server stops, its whole
log, every response body a test read through `Fluxback` and its `/metrics` output are
searched for them: a secret that leaks anywhere fails the test that leaked it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.flux_replay import event_body, flux_headers
from tests.helpers import free_port

HMAC_KEY = b"reliability-hmac-key-5f1c9e2b"
BEARER_TOKEN = "reliability-bearer-token-8d2a71c4"
ADMIN_TOKEN = "reliability-admin-token-3c4b90aa"
AIRFLOW_TOKEN = "reliability-airflow-token-77e1f0d3"
SECRETS = (HMAC_KEY.decode(), BEARER_TOKEN, ADMIN_TOKEN, AIRFLOW_TOKEN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here carries the `reliability` marker, so `-m reliability` runs the suite alone."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.reliability)


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fluxback:
    """One `fluxback serve` process with its config, secrets and log under `root`."""

    root: Path
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    seen: list[bytes] = field(default_factory=list)
    """Every response body read through this object, for the secret check."""
    answers: list[tuple[bytes, Response]] = field(default_factory=list)
    """Every event posted with `post_event` and the answer it got."""
    _log_threads: list[threading.Thread] = field(default_factory=list)
    starts: int = 0

    def __post_init__(self) -> None:
        secrets = self.root / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        for name, value in (
            ("hmac", HMAC_KEY + b"\n"),
            ("bearer", BEARER_TOKEN.encode()),
            ("admin", ADMIN_TOKEN.encode()),
            ("airflow", AIRFLOW_TOKEN.encode()),
        ):
            (secrets / name).write_bytes(value)

    @property
    def journal_path(self) -> Path:
        url = str(self.settings.get("journal", f"sqlite://{self.root / 'journal.db'}"))
        return Path(url.removeprefix("sqlite://"))

    @property
    def log_path(self) -> Path:
        return self.root / "fluxback.log"

    def config(self) -> dict[str, Any]:
        secrets = self.root / "secrets"
        tree: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "journal": f"sqlite://{self.root / 'journal.db'}",
            "journal_timeout_seconds": 1.0,
            "webhook": {
                "hmac_keys": [str(secrets / "hmac")],
                "bearer_tokens": [str(secrets / "bearer")],
                "read_timeout_seconds": 2.0,
                "header_timeout_seconds": 2.0,
            },
            "admin_tokens": [str(secrets / "admin")],
            "airflow": {
                "instances": {
                    "default": {"url": "http://127.0.0.1:9", "token_file": str(secrets / "airflow")}
                }
            },
            "log": {"format": "json", "level": "info"},
        }
        for key, value in self.settings.items():
            if isinstance(value, dict) and isinstance(tree.get(key), dict):
                tree[key] = {**tree[key], **value}
            else:
                tree[key] = value
        return tree

    def start(
        self,
        *,
        limits: Mapping[int, int] | None = None,
        ready: bool = True,
        timeout: float = 60.0,
    ) -> None:
        """Start the process (resource `limits` apply to it alone) and wait for /healthz (or /readyz)."""
        config_path = self.root / "fluxback.yaml"
        config_path.write_text(yaml.safe_dump(self.config()), encoding="utf-8")

        def child_setup() -> None:
            # A file-size limit must fail the write (EFBIG), not kill the process.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            for which, value in (limits or {}).items():
                resource.setrlimit(which, (value, value))

        # The log goes through a pipe, so a file-size limit on the process cannot cut it.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--config", str(config_path)],
            cwd=self.root,
            env={k: v for k, v in os.environ.items() if not k.startswith("FLUXBACK_")},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup,
        )
        self.starts += 1
        thread = threading.Thread(target=self._copy_log, args=(self.process,), daemon=True)
        thread.start()
        self._log_threads.append(thread)
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"fluxback exited at start:\n{self.log_text()[-3000:]}")
            try:
                if self.request("GET", path, timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"fluxback not up after {timeout:.0f} s:\n{self.log_text()[-3000:]}")

    def _copy_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout, self.log_path.open("ab") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Send `sig` (unless the process has exited) and wait for the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 40.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        for thread in self._log_threads:
            thread.join(timeout=5)
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines; anything else (a traceback, a stray print) fails the caller's test."""
        lines = []
        for line in self.log_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"log line is not JSON: {line[:300]!r}") from None
        return lines

    def log_lines_once(self, event: str, count: int, within: float = 10.0) -> list[dict[str, Any]]:
        """The JSON log lines once `count` of them are `event` (or after `within` seconds): a line
        reaches the log file through the copy thread a moment after the answer it went with."""
        deadline = time.monotonic() + within
        while True:
            lines = self.log_lines()
            if sum(line.get("event") == event for line in lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    # --- requests -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body or None, headers=dict(headers or {}))
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        self.seen.append(data)
        return Response(answer.status, dict(answer.getheaders()), data)

    def post_event(self, body: bytes, headers: Mapping[str, str] | None = None, **kwargs: Any) -> Response:
        sent = headers if headers is not None else flux_headers(body, hmac_key=HMAC_KEY)
        answer = self.request("POST", "/flux/events", body, sent, **kwargs)
        self.answers.append((body, answer))
        return answer

    def raw(self, data: bytes, *, timeout: float = 10.0) -> Response:
        """Send `data` as it is on a fresh connection and read one response."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            return self.read_response(sock)

    def read_response(self, sock: socket.socket, method: str = "GET") -> Response:
        answer = http.client.HTTPResponse(sock, method=method)
        try:
            answer.begin()
            body = answer.read()
        finally:
            answer.close()
        self.seen.append(body)
        return Response(answer.status, dict(answer.getheaders()), body)

    def metrics(self) -> str:
        return self.request("GET", "/metrics").body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample in /metrics (0 when absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
        for line in self.metrics().splitlines():
            match = pattern.match(line)
            if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
                return float(match.group(2))
        return 0.0

    def assert_no_secret_leaked(self) -> None:
        texts = [self.log_text().encode(), *self.seen]
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):  # a test may have left it unable to answer
                texts.append(self.metrics().encode())
        for secret in SECRETS:
            for text in texts:
                assert secret.encode() not in text, f"a secret leaked: {text[:200]!r}"


def journaled_bodies(journal_path: Path) -> list[bytes]:
    """Every body in the journal, read with the sqlite3 module (the server may be stopped)."""
    import sqlite3

    with sqlite3.connect(journal_path) as db:
        return [bytes(row[0]) for row in db.execute("SELECT body FROM deliveries ORDER BY id")]


@pytest.fixture
def fluxback(tmp_path: Path) -> Iterator[Callable[..., Fluxback]]:
    """Makes servers (`fluxback(settings)`); stops each at the end and checks it leaked nothing."""
    made: list[Fluxback] = []

    def make(**settings: Any) -> Fluxback:
        server = Fluxback(tmp_path / f"fluxback-{len(made)}", settings)
        made.append(server)
        return server

    yield make
    for server in made:
        try:
            server.assert_no_secret_leaked()
        finally:
            if server.process is not None:
                server.stop(signal.SIGKILL)


def unique_events(count: int, prefix: str = "app") -> list[bytes]:
    return [event_body(name=f"{prefix}-{i}", revision=f"main@sha1:{i:040x}") for i in range(count)]
