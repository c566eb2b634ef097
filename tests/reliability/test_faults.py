"""A bad day for the disk and the key files: full, locked, read-only, deleted, emptied, rotated.

Whatever breaks, an event is either stored (202) or refused with a status Flux retries
(503 + Retry-After), the probes answer within their deadlines, readiness tells the truth,
and nothing answered 202 is lost or stored twice.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.flux_replay import event_body, flux_headers
from tests.reliability.conftest import HMAC_KEY, Fluxback, journaled_bodies, unique_events

Start = Callable[..., Fluxback]


def _post_all(server: Fluxback, bodies: list[bytes]) -> dict[bytes, int]:
    return {body: server.post_event(body).status for body in bodies}


def _assert_retryable_or_stored(server: Fluxback, statuses: dict[bytes, int]) -> None:
    for body, status in statuses.items():
        assert status in (202, 503), status
        if status == 503:
            answer = next(a for b, a in reversed(server.answers) if b == body)
            assert answer.headers["Retry-After"] == "3"


def _redeliver_and_check(server: Fluxback, statuses: dict[bytes, int]) -> None:
    """Flux's retry of every refused event now succeeds, and every event is stored exactly once."""
    for body, status in statuses.items():
        if status != 202:
            assert server.post_event(body).status == 202
    stored = journaled_bodies(server.journal_path)
    assert sorted(stored) == sorted(statuses)


def _probe_seconds(server: Fluxback, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status = server.request("GET", path, timeout=10).status
    return status, time.monotonic() - started


def test_full_disk_by_file_size_limit(fluxback: Start) -> None:
    """RLIMIT_FSIZE makes every write past the limit fail as a full disk would, on any machine."""
    server = fluxback()
    server.start()
    assert server.stop() == 0
    size = max(p.stat().st_size for p in server.root.glob("journal.db*"))
    server.start(limits={resource.RLIMIT_FSIZE: size + 96 * 1024})
    statuses = _post_all(server, unique_events(60, "fsize"))
    _assert_retryable_or_stored(server, statuses)
    assert 202 in statuses.values() and 503 in statuses.values()
    ready = server.request("GET", "/readyz")
    assert ready.status == 503
    assert ready.json()["detail"].startswith("journal: ")
    assert server.request("GET", "/healthz").status == 200
    assert server.metric("fluxback_ready") == 0
    assert server.metric("fluxback_events_received_total", result="journal_unavailable") >= 1
    assert server.stop() == 0
    server.start()
    _redeliver_and_check(server, statuses)


def test_locked_journal_is_a_503_in_time_and_probes_answer(fluxback: Start) -> None:
    """Another process holding the journal's write lock: appends cannot commit, nothing hangs."""
    server = fluxback()
    server.start()
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(server.journal_path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline() == b"locked\n"
        bodies = unique_events(5, "locked")
        for body in bodies:
            started = time.monotonic()
            answer = server.post_event(body)
            assert (answer.status, answer.headers["Retry-After"]) == (503, "3")
            assert time.monotonic() - started < 2.5  # journal_timeout_seconds is 1
        # Reads have their own connection, so /deliveries answers while the write lock is held.
        for path, expected in (("/readyz", 503), ("/deliveries", 200), ("/healthz", 200), ("/metrics", 200)):
            status, seconds = _probe_seconds(server, path)
            assert status == expected, path
            assert seconds < 2.5, path
    finally:
        locker.kill()
        locker.wait()
        if locker.stdout is not None:
            locker.stdout.close()
    # Flux's retries commit (the cut-off appends may have committed late: then they are
    # duplicates of themselves), and a committed append makes the pod ready again.
    _redeliver_and_check(server, dict.fromkeys(bodies, 503))
    assert server.request("GET", "/readyz").status == 200
    assert server.metric("fluxback_events_received_total", result="journal_timeout") >= 1


def _mount(*arguments: str) -> None:
    """Run mount(8) as root, or skip the test with the reason (a fresh CI machine may lack both)."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8); the RLIMIT_FSIZE and lock tests cover the same paths")
    done = subprocess.run(["mount", *arguments], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(arguments)}: {done.stderr.decode().strip()}")


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """An empty folder that tests mount over; unmounted (lazily) at the end."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as file:
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    return filler


def test_full_tmpfs(fluxback: Start, mount_point: Path) -> None:
    """A real file system that fills up while events arrive, then gets space back."""
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point))
    server = fluxback(journal=f"sqlite://{mount_point}/journal.db")
    server.start()
    statuses = {event_body(name="before"): server.post_event(event_body(name="before")).status}
    filler = _fill(mount_point)
    full = _post_all(server, unique_events(30, "tmpfs-full"))
    _assert_retryable_or_stored(server, full)
    assert 503 in full.values()
    assert server.request("GET", "/readyz").status == 503
    assert server.request("GET", "/healthz").status == 200
    filler.unlink()
    statuses.update(full)
    _redeliver_and_check(server, statuses)
    assert server.request("GET", "/readyz").status == 200
    assert server.stop() == 0


def test_read_only_journal_refuses_to_start(fluxback: Start, tmp_path: Path, mount_point: Path) -> None:
    """A journal on a read-only file system cannot take events: the process says so and exits."""
    server = fluxback(journal=f"sqlite://{mount_point}/journal.db")
    source = tmp_path / "journal-folder"
    source.mkdir()
    _mount("--bind", str(source), str(mount_point))
    server.start()
    assert server.post_event(event_body()).status == 202
    assert server.stop() == 0
    _mount("-o", "remount,ro,bind", str(mount_point))
    with pytest.raises(AssertionError, match="exited at start"):
        server.start()
    assert server.wait() != 0
    assert "journal" in server.log_text().splitlines()[-1]


def _signed(body: bytes, key: bytes) -> dict[str, str]:
    return flux_headers(body, hmac_key=key)


def test_key_file_deleted_emptied_replaced_by_a_directory(fluxback: Start) -> None:
    server = fluxback(webhook={"bearer_tokens": []})
    server.start()
    key_file = server.root / "secrets" / "hmac"
    body = event_body(name="keys")

    def broken(describe: str) -> None:
        answer = server.post_event(body)
        assert (answer.status, answer.headers.get("Retry-After")) == (503, "3"), describe
        ready = server.request("GET", "/readyz")
        assert ready.status == 503, describe
        assert "webhook.hmac_keys[0]" in ready.json()["detail"], describe

    key_file.unlink()
    broken("deleted")
    key_file.write_bytes(b"")
    broken("emptied")
    key_file.write_bytes(b" \n")
    broken("whitespace")
    key_file.unlink()
    key_file.mkdir()
    broken("a directory")
    key_file.rmdir()
    key_file.write_bytes(HMAC_KEY)
    assert server.post_event(body).status == 202
    assert server.request("GET", "/readyz").status == 200
    assert server.metric("fluxback_events_received_total", result="credentials_unavailable") == 4


def test_key_rotation_through_a_symlink_under_load(fluxback: Start) -> None:
    """Kubernetes swaps a `..data` symlink; the new key works at once, the old one stops."""
    server = fluxback(webhook={"bearer_tokens": []})
    secrets = server.root / "secrets"
    old_key, new_key = HMAC_KEY, b"reliability-rotated-key-1b7e"
    for version, key in (("v1", old_key), ("v2", new_key)):
        (secrets / version).mkdir()
        (secrets / version / "token").write_bytes(key)
    (secrets / "..data").symlink_to("v1")
    (secrets / "hmac").unlink()
    (secrets / "hmac").symlink_to("..data/token")
    server.start()
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        for number in itertools.count():
            if stop.is_set():
                return
            body = event_body(name=f"rotation-{number}")
            statuses.append(server.post_event(body, _signed(body, old_key)).status)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        while statuses.count(202) < 20:
            time.sleep(0.01)
        (secrets / "..data.tmp").symlink_to("v2")
        os.replace(secrets / "..data.tmp", secrets / "..data")
        body = event_body(name="after-rotation")
        assert server.post_event(body, _signed(body, new_key)).status == 202
        stale = event_body(name="old-key-after-rotation")
        assert server.post_event(stale, _signed(stale, old_key)).status == 401
    finally:
        stop.set()
        loader.join()
    assert set(statuses) <= {202, 401}
    accepted = [b for b, a in server.answers if a.status == 202]
    assert set(accepted) <= set(journaled_bodies(server.journal_path))
