"""A real, throwaway PostgreSQL server for the tests, started and stopped by PID.

`initdb` refuses to run as root, so when the tests run as root the server runs as
the `postgres` user in a temporary folder it owns. Local (unix socket) connections
are trusted for the test's administration; TCP connections need a password, as in
production, so the journal is always reached with `journal_password_file`.
Durability is off (`fsync=off`): these tests are about semantics, not disks.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROLE = "fluxback"
PASSWORD = "journal-password-for-tests"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; `start`/`stop` may be called repeatedly."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fluxback-pg-")))
    port: int = field(default_factory=_free_port)
    durable: bool = False
    pid: int | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self, *command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._as_owner(
                str(_bindir() / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            self._as_owner(
                str(_bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                "-w", "-o", options, "start",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT to the postmaster), waiting until it has exited."""
        if self.pid is None:
            return
        os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        self.pid = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def admin(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the unix socket (trusted), autocommit."""
        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=database, autocommit=True
        )

    def url(self, database: str) -> str:
        """What the `journal` key holds: no password (it comes from the password file)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def url_with_password(self, database: str) -> str:
        """For clients that take their password only in the URL (Airflow's metadata database)."""
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_role(self) -> None:
        with self.admin() as db:
            db.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")

    def create_database(self, name: str, template: str | None = None) -> None:
        with self.admin() as db:
            copy = f" TEMPLATE {template}" if template else ""
            db.execute(f"CREATE DATABASE {name} OWNER {ROLE}{copy}".encode())

    def drop_database(self, name: str) -> None:
        with self.admin() as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@contextmanager
def running_server(database: str, durable: bool = False) -> Iterator[PostgresServer]:
    """A started server with the Fluxback role and one empty `database` it owns, removed afterwards."""
    server = PostgresServer(durable=durable)
    server.init()
    server.start()
    try:
        server.create_role()
        server.create_database(database)
        yield server
    finally:
        server.remove()
