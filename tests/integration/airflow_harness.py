"""A real Airflow 3.3.2 for the integration tests, started once per pytest session.

Airflow lives in its own virtualenv under `<repo>/.cache/` (it needs ~300 MB and its own
pinned dependencies, which must not leak into Fluxback's). The four components run as
separate processes, each the leader of its own process group, so teardown can stop every
fork they make. The set-up is the smallest one that runs every Airflow 3 component:
LocalExecutor with 4 slots, SimpleAuthManager with a passwords file, and fixed secrets so
that tests can craft their own tokens. The metadata database is the one the caller gives
(the test session's PostgreSQL: Airflow on SQLite answers concurrent writes, such as two
Fluxback replicas posting asset events, with `500 Database error`, and can fail a resumed
task under load) or, for a quick local run, a SQLite file in the home folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from tests.helpers import free_port

AIRFLOW_VERSION = "3.3.2"
# Airflow's PostgreSQL drivers: psycopg 3 (SQLAlchemy 2.1's default for postgresql://) for its sync
# engine, asyncpg for the API server's async one.
POSTGRES_DRIVERS = ("psycopg[binary]==3.3.9", "asyncpg==0.32.0")
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".cache" / f"airflow-{AIRFLOW_VERSION}-postgres"
DAG_SOURCES = (REPO_ROOT / "tests" / "integration" / "dags", REPO_ROOT / "examples" / "dags")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
USERS = {"admin": "admin-pass-123", "viewer": "viewer-pass-123"}
JWT_SECRET = "fluxback-integration-jwt-secret-0123456789abcdef"
FERNET_KEY = "Zmx1eGJhY2staW50ZWdyYXRpb24tZmVybmV0LWtleSE="
_MARKER = ".fluxback-complete"
_HARNESS_ENV = "FLUXBACK_AIRFLOW_HARNESS"
"""Set in every Airflow process's environment, so teardown finds forks that left their session."""

T = TypeVar("T")


def ensure_airflow_venv(venv: Path = VENV) -> Path:
    """Create (once) a virtualenv with apache-airflow; reused while its marker file says it is complete.

    It is installed into a temporary directory and renamed into place, under a file lock, so an
    interrupted install is never mistaken for a complete one. After the rename the console scripts'
    shebangs point at the old directory, which is why Airflow is always run as `python -m airflow`.
    """
    spec = " ".join((f"apache-airflow=={AIRFLOW_VERSION}", *POSTGRES_DRIVERS))
    marker = venv / _MARKER
    if marker.is_file() and marker.read_text() == spec:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == spec:
            return venv
        for leftover in venv.parent.glob(f"{venv.name}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = venv.parent / f"{venv.name}.tmp-{os.getpid()}"
        subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True, timeout=120)
        log = venv.parent / f"{venv.name}.install.log"
        with open(log, "wb") as out:
            result = subprocess.run(
                [str(staging / "bin" / "python"), "-m", "pip", "install", "--quiet", *spec.split()],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"installing {spec} failed (exit {result.returncode}):\n{_tail(log, 30)}")
        (staging / _MARKER).write_text(spec)
        shutil.rmtree(venv, ignore_errors=True)
        staging.rename(venv)
    return venv


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class AirflowServer:
    """One running Airflow: where it is, how to log in, and the calls tests need to drive it."""

    def __init__(self, root: Path, venv: Path, database: str | None = None) -> None:
        self.root = root
        self.python = venv / "bin" / "python"
        self.home = root / "home"
        self.dags_folder = root / "dags"
        self.logs = root / "logs"
        self.database = database or f"sqlite:///{self.home / 'airflow.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.username = "admin"
        self.password = USERS["admin"]
        self.users = dict(USERS)
        self.jwt_secret = JWT_SECRET
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The environment of every Airflow process, with this run's ports and paths."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("AIRFLOW") and key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        }
        env.update(
            {
                _HARNESS_ENV: str(self.root),
                "PYTHONPATH": str(REPO_ROOT),  # DAG files may `import receiver.*`
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "passwords.json"),
                "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__SECRET_KEY": "fluxback-integration-api-secret",
                "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        return env

    def start(self, timeout: float = 90.0) -> None:
        """Migrate the database, start the four components, and wait until all report healthy."""
        for folder in (self.home, self.dags_folder, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        (self.root / "passwords.json").write_text(json.dumps(self.users))
        self._copy_dags()
        env = self.environment()
        with open(self.logs / "db-migrate.log", "wb") as log:
            migrate = subprocess.run(
                [str(self.python), "-m", "airflow", "db", "migrate"],
                env=env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
            )
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{_tail(self.logs / 'db-migrate.log', 40)}")
        for component in COMPONENTS:
            self._spawn(component, env)
        self._wait_healthy(timeout)

    def _spawn(self, component: str, env: Mapping[str, str]) -> None:
        with open(self.logs / f"{component}.log", "ab") as log:
            self.processes[component] = subprocess.Popen(
                [str(self.python), "-m", "airflow", component],
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_api_server(self, grace: float = 20.0) -> None:
        """Take the REST API away (the scheduler keeps running), as an Airflow outage looks to Fluxback."""
        process = self.processes["api-server"]
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def start_api_server(self, timeout: float = 90.0) -> None:
        """Bring the REST API back on the same port and wait until Airflow is healthy again."""
        self._spawn("api-server", self.environment())
        self._wait_healthy(timeout)

    def _copy_dags(self) -> None:
        for source in DAG_SOURCES:
            if not source.is_dir():
                continue
            target = self.dags_folder if source == DAG_SOURCES[0] else self.dags_folder / source.parent.name
            target.mkdir(exist_ok=True)
            for dag_file in sorted(source.glob("*.py")):
                shutil.copy2(dag_file, target / dag_file.name)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health: Any = None
        while time.monotonic() < deadline:
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"Airflow component(s) exited: {', '.join(dead)}\n{self.log_tail()}")
            try:
                status, health = self.request("GET", "/api/v2/monitor/health", auth=False)
            except OSError:
                status = 0
            if (
                status == 200
                and isinstance(health, Mapping)
                and all(isinstance(c, Mapping) and c.get("status") == "healthy" for c in health.values())
            ):
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"Airflow not healthy after {timeout:.0f} s (last health: {health})\n{self.log_tail()}"
        )

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every component's process group, SIGKILL what is left; no process survives."""
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._strays() and time.monotonic() < deadline:
            for process in self.processes.values():
                process.poll()  # reap, so a finished component does not linger as a zombie
            time.sleep(0.2)
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)
        for pid in self._strays():
            _kill(pid)
        for process in self.processes.values():
            process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self._strays() and time.monotonic() < deadline:
            time.sleep(0.1)
        if survivors := self._strays():
            raise RuntimeError(f"Airflow processes survived teardown: {survivors}")

    def _strays(self) -> list[int]:
        """Live processes started by this harness: in a component's session, or carrying the marker.

        The environment check catches forks that called setsid; it misses those that also
        rewrote their environment block with setproctitle, hence the session check too.
        """
        sessions = {str(process.pid) for process in self.processes.values()}
        marker = f"{_HARNESS_ENV}={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
                ours = session in sessions or marker in (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if ours and state != "Z":
                found.append(int(entry.name))
        return found

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every component's log, for failure messages."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"----- {log.name} -----\n{_tail(log, lines)}")
        return "\n".join(parts)

    # -- HTTP -------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        auth: bool = True,
        token: str | None = None,
    ) -> tuple[int, Any]:
        """One HTTP call; returns the status and the JSON body (or the text when it is not JSON)."""
        if params:
            path = f"{path}?{urlencode(params)}"
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if auth or token is not None:
            headers["Authorization"] = f"Bearer {token or self.token()}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = connection.getresponse()
            raw = response.read().decode(errors="replace")
            status = response.status
        finally:
            connection.close()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        expect: Iterable[int] = (200,),
    ) -> Any:
        """`request` under `/api/v2` that fails the test on an unexpected status."""
        status, answer = self.request(method, f"/api/v2{path}", body, params=params)
        if status not in tuple(expect):
            raise AssertionError(f"{method} {path} -> {status}: {answer}")
        return answer

    def token(self) -> str:
        """An admin token from `POST /auth/token`, minted once."""
        if self._token is None:
            self._token = self.mint_token(self.username, self.password)
        return self._token

    def mint_token(self, username: str, password: str) -> str:
        status, answer = self.request(
            "POST", "/auth/token", {"username": username, "password": password}, auth=False
        )
        if status != 201:
            raise AssertionError(f"POST /auth/token as {username} -> {status}: {answer}")
        token: str = answer["access_token"]
        return token

    # -- DAGs, runs, task instances, assets ------------------------------------------------------

    def wait_for_dags(self, *dag_ids: str, timeout: float = 60.0, unpause: bool = True) -> None:
        """Block until the dag processor has parsed these DAGs; unpause them (new DAGs start paused)."""
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while missing and time.monotonic() < deadline:
            missing = [d for d in missing if self.request("GET", f"/api/v2/dags/{_seg(d)}")[0] != 200]
            if missing:
                time.sleep(0.5)
        if missing:
            errors = self.api("GET", "/importErrors")
            raise AssertionError(
                f"DAGs not visible after {timeout:.0f} s: {missing}; import errors: {errors}\n"
                + self.log_tail()
            )
        for dag_id in dag_ids if unpause else ():
            self.unpause(dag_id)

    @contextlib.contextmanager
    def connection(self, prefix: str, **fields: Any) -> Iterator[str]:
        """A generic Airflow Connection with a fresh id, deleted afterwards (Airflow is session-wide)."""
        conn_id = f"{prefix}_{uuid.uuid4().hex[:8]}"
        body = {"connection_id": conn_id, "conn_type": "generic", **fields}
        self.api("POST", "/connections", body, expect=(201,))
        try:
            yield conn_id
        finally:
            self.api("DELETE", f"/connections/{conn_id}", expect=(204,))

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{_seg(dag_id)}", {"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf or {})}
        run: dict[str, Any] = self.api("POST", f"/dags/{_seg(dag_id)}/dagRuns", body)
        return run

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.api("GET", f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}")
        return run

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        answer = self.api("GET", f"/dags/{_seg(dag_id)}/dagRuns", params={"order_by": "-run_after"})
        runs: list[dict[str, Any]] = answer["dag_runs"]
        return runs

    def component_log(self, component: str) -> str:
        """What one Airflow component (e.g. "scheduler") has written to its log so far."""
        return (self.logs / f"{component}.log").read_text(errors="replace")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """`{task_id: state}` of one run; mapped tasks appear as `task_id[index]`."""
        answer = self.api("GET", f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances")
        return {
            ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
            for ti in answer["task_instances"]
        }

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}/xcomEntries/{key}"
        return self.api("GET", path, params={"deserialize": "true"})["value"]

    def asset_events(self, asset_id: int) -> list[dict[str, Any]]:
        answer = self.api("GET", "/assets/events", params={"asset_id": asset_id, "order_by": "-timestamp"})
        events: list[dict[str, Any]] = answer["asset_events"]
        return events

    async def wait_for_ti_state(
        self, dag_id: str, run_id: str, task_id: str, states: Iterable[str | None], within: float = 60.0
    ) -> str | None:
        """Poll until the task instance is in one of `states`; returns the state reached."""
        wanted = set(states)

        def check() -> tuple[bool, str | None]:
            state = self.task_states(dag_id, run_id).get(task_id, "<missing>")
            return state in wanted, state

        return await self.wait_until(
            check, within, f"{dag_id}/{run_id}/{task_id} in {sorted(map(str, wanted))}"
        )

    async def wait_for_run_state(
        self, dag_id: str, run_id: str, states: Iterable[str] = ("success", "failed"), within: float = 60.0
    ) -> str:
        """Poll until the DAG run is in one of `states` (by default: finished); returns the state."""
        wanted = set(states)

        def check() -> tuple[bool, str]:
            state: str = self.dag_run(dag_id, run_id)["state"]
            return state in wanted, state

        return await self.wait_until(check, within, f"run {dag_id}/{run_id} in {sorted(wanted)}")

    async def wait_until(self, check: Callable[[], tuple[bool, T]], within: float, what: str) -> T:
        """Run the blocking `check` in a thread every 0.5 s until it reports done; returns its value."""
        deadline = time.monotonic() + within
        while True:
            done, value = await asyncio.to_thread(check)
            if done:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within:.0f} s waiting for {what}; last: {value}")
            await asyncio.sleep(0.5)


def _seg(value: str) -> str:
    return quote(value, safe="")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
