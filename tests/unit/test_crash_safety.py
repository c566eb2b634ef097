"""An event answered 202 survives `kill -9`: the journal commits before the answer.

The service runs as a real process (`python -m receiver serve`); the test plays
Flux against it, kills it the moment it has answered enough events, starts it
again and checks that every accepted event is in the journal exactly once. A
second process on the same SQLite journal is refused while the first lives, and
starts once it has been killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from receiver.journal import DeliveryFilter
from receiver.journal.sqlite import SqliteJournal
from tests.flux_replay import event_body, post_event
from tests.helpers import free_port

KEY = b"crash-test-key"
SENT = 60
KILL_AFTER = 40


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "hmac-key").write_bytes(KEY + b"\n")
    path = tmp_path / "fluxback.yaml"
    tree = {
        "listen": f"127.0.0.1:{free_port()}",
        "journal": f"sqlite://{tmp_path}/journal.db",
        "webhook": {"hmac_keys": [str(tmp_path / "hmac-key")]},
        "log": {"format": "json"},
    }
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


@pytest.fixture
def url(config_file: Path) -> str:
    return "http://" + str(yaml.safe_load(config_file.read_text())["listen"])


Launch = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def launch(config_file: Path) -> Iterator[Launch]:
    """Starts the service as a subprocess (`config` defaults to `config_file`); kills whatever is
    left at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path = config_file) -> subprocess.Popen[bytes]:
        log = _log_path(config_file, len(started)).open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("FLUXBACK_")},
        )
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _log_path(config_file: Path, number: int) -> Path:
    return config_file.parent / f"service-{number}.log"


async def _wait_until_up(session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):  # imports alone take several seconds on a busy CI machine
        assert process.poll() is None, "the service exited during start-up"
        try:
            async with session.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the service did not start within 30 s")


async def test_every_accepted_event_survives_kill_9(config_file: Path, url: str, launch: Launch) -> None:
    bodies = [event_body(name=f"app-{i}", revision=f"main@sha1:{i:040x}") for i in range(SENT)]
    accepted: dict[bytes, int] = {}

    async with aiohttp.ClientSession() as session:
        process = launch()
        await _wait_until_up(session, url, process)

        async def send(body: bytes) -> tuple[bytes, int, object]:
            status, answer = await post_event(session, f"{url}/flux/events", body, hmac_key=KEY)
            return body, status, answer

        pending = [asyncio.ensure_future(send(body)) for body in bodies]
        for next_done in asyncio.as_completed(pending):
            try:
                body, status, answer = await next_done
            except aiohttp.ClientError:
                continue
            assert status == 202
            assert isinstance(answer, dict)
            accepted[body] = answer["id"]
            if len(accepted) == KILL_AFTER:
                process.send_signal(signal.SIGKILL)
                break
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, tuple) and outcome[1] == 202:
                accepted[outcome[0]] = outcome[2]["id"]  # type: ignore[index]
        process.wait()
        assert process.returncode == -signal.SIGKILL

        restarted = launch()
        await _wait_until_up(session, url, restarted)
        for body, delivery_id in accepted.items():
            status, answer = await post_event(session, f"{url}/flux/events", body, hmac_key=KEY)
            assert (status, answer) == (202, {"id": delivery_id, "duplicate": True})
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=15) == 0

    journal = SqliteJournal(config_file.parent / "journal.db")
    await journal.open()
    try:
        summaries = await journal.list(DeliveryFilter(limit=1000))
        stored = {s.id: await journal.get(s.id) for s in summaries}
    finally:
        await journal.close()
    bodies_stored = Counter(d.body for d in stored.values() if d is not None)
    assert len(accepted) >= KILL_AFTER
    for body, delivery_id in accepted.items():
        assert bodies_stored[body] == 1
        entry = stored[delivery_id]
        assert entry is not None
        assert json.loads(entry.body) == json.loads(body)
    assert all(count == 1 for count in bodies_stored.values())


@pytest.fixture
def other_config(config_file: Path) -> tuple[Path, str]:
    """The same journal, another port: a second replica's configuration, and its URL."""
    listen = f"127.0.0.1:{free_port()}"
    other = config_file.with_name("other.yaml")
    tree = yaml.safe_load(config_file.read_text())
    other.write_text(yaml.safe_dump({**tree, "listen": listen}), encoding="utf-8")
    return other, f"http://{listen}"


async def test_a_second_process_on_one_sqlite_journal_is_refused_until_the_first_dies(
    config_file: Path, url: str, launch: Launch, other_config: tuple[Path, str]
) -> None:
    other, other_url = other_config
    async with aiohttp.ClientSession() as session:
        first = launch()
        await _wait_until_up(session, url, first)

        refused = launch(other)
        assert refused.wait(timeout=120) == 1
        said = _log_path(config_file, 1).read_text()
        journal = config_file.parent / "journal.db"
        assert (
            f"another Fluxback process already uses the SQLite journal at {journal} (pid {first.pid})" in said
        )
        assert "use a PostgreSQL journal for several" in said
        assert first.poll() is None  # the first one serves on, untouched

        listing = await asyncio.create_subprocess_exec(  # reading the journal beside the service is allowed
            *(sys.executable, "-m", "receiver", "deliveries", "--config", str(config_file)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("FLUXBACK_")},
        )
        listed, problems = await asyncio.wait_for(listing.communicate(), timeout=120)
        assert (listing.returncode, listed) == (0, b"no deliveries match\n"), problems

        first.send_signal(signal.SIGKILL)  # the kernel drops a dead process's lock
        first.wait()
        taking_over = launch(other)
        await _wait_until_up(session, other_url, taking_over)
        taking_over.send_signal(signal.SIGTERM)
        assert taking_over.wait(timeout=15) == 0
