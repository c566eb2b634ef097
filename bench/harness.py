"""What the benchmarks share: a real `fluxback serve` subprocess, a real PostgreSQL, signed events.

Every server and database is started here and stopped by PID when the `with` block ends.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.flux_replay import event_body, flux_headers
from tests.integration.airflow_harness import free_port
from tests.postgres_server import PASSWORD, running_server

KEY = b"bench-hmac-key"
BACKENDS = ("sqlite", "postgresql")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def signed_event(number: int, objects: int) -> tuple[bytes, dict[str, str]]:
    """A unique ~1 KB event for one of `objects` Flux objects, with its HMAC headers."""
    body = event_body(
        name=f"app-{number % objects}",
        revision=f"main@sha1:{number:040x}",
        message=f"Reconciliation finished in {number}ms, next run in 10m0s; " + "x" * 600,
    )
    return body, flux_headers(body, hmac_key=KEY)


@dataclass(frozen=True)
class Running:
    url: str
    pid: int


@contextmanager
def journal_url(backend: str, root: Path) -> Iterator[tuple[str, Path | None]]:
    """A journal for `backend`: a SQLite file, or a fresh PostgreSQL (default fsync) with a password file."""
    if backend == "sqlite":
        yield f"sqlite:///{root}/journal.db", None
        return
    with running_server("bench", durable=True) as server:
        password = root / "pg-password"
        password.write_text(PASSWORD)
        yield server.url("bench"), password


@contextmanager
def fluxback(backend: str, extra_config: str = "", cpu: int | None = None) -> Iterator[Running]:
    """`fluxback serve` on a loopback port with an HMAC key, the given journal, nothing else
    configured (no git, no Airflow: each delivery records that only rules apply)."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "key").write_bytes(KEY)
        with journal_url(backend, root) as (url, password):
            port = free_port()
            config = (
                f"listen: 127.0.0.1:{port}\njournal: {url}\n"
                f"webhook: {{hmac_keys: [{root}/key]}}\nlog: {{format: json, level: warning}}\n"
            )
            if password is not None:
                config += f"journal_password_file: {password}\n"
            (root / "config.yaml").write_text(config + extra_config)
            pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
            server = subprocess.Popen(
                [*pin, sys.executable, "-m", "receiver", "serve", "--config", str(root / "config.yaml")],
                stdout=subprocess.DEVNULL,
            )
            try:
                running = Running(f"http://127.0.0.1:{port}", server.pid)
                wait_ready(f"{running.url}/readyz")
                yield running
            finally:
                server.terminate()
                server.wait(timeout=30)


def wait_ready(url: str, status: int = 200) -> None:
    """Until a GET of `url` answers `status`."""

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as answer:
                return answer.status == status
        except aiohttp.ClientError:
            return False

    for _ in range(600):
        if asyncio.run(ready()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"fluxback at {url} did not become ready")
