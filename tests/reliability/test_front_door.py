"""Connections, headers and shutdown: what an attacker or a restart does to the front door."""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.flux_replay import event_body, flux_headers
from tests.reliability.conftest import BEARER_TOKEN, HMAC_KEY, Fluxback, journaled_bodies, unique_events

Start = Callable[..., Fluxback]


def _head(length: int, body: bytes | None = None, extra: str = "") -> bytes:
    signature = flux_headers(body, hmac_key=HMAC_KEY)["X-Signature"] if body is not None else "sha256=00"
    return (
        f"POST /flux/events HTTP/1.1\r\nHost: fluxback\r\nContent-Type: application/json\r\n"
        f"X-Signature: {signature}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_idle_connections_are_closed_at_the_header_deadline(fluxback: Start) -> None:
    server = fluxback()
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"POST /flux/events HTTP/1.1\r\nHost: x\r\n")  # headers that never end
    time.sleep(2.6)  # header_timeout_seconds is 2
    for sock in [*idle, slow]:
        sock.settimeout(2)
        assert sock.recv(100) == b"", "the server closed the connection without answering"
        sock.close()
    assert server.post_event(event_body()).status == 202


def test_connection_cap_under_a_low_descriptor_limit(fluxback: Start) -> None:
    """1,000 connections that send nothing against a 512-descriptor process: it keeps
    answering Flux and the probes, says so once, and never runs out of descriptors."""
    server = fluxback(webhook={"header_timeout_seconds": 30.0})
    server.start(limits={resource.RLIMIT_NOFILE: 512})
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.5)
        started = time.monotonic()
        assert server.post_event(event_body()).status == 202
        assert server.request("GET", "/readyz").status == 200
        assert time.monotonic() - started < 2.0
        assert server.metric("fluxback_connections_evicted_total") >= 1000 - 512
    finally:
        for sock in idle:
            sock.close()
    log = server.log_text()
    assert log.count("http.connection_limit_reached") == 1
    assert "out of system resource" not in log
    assert "Too many open files" not in log


def test_slowloris_does_not_delay_a_signed_event(fluxback: Start) -> None:
    """A few hundred connections dribble headers and bodies; a signed event still gets its 202 quickly."""
    server = fluxback()
    server.start()
    stop = threading.Event()
    sockets: list[socket.socket] = []
    for i in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /flux/events HTTP/1.1\r\n" if i % 2 else _head(400))
        sockets.append(sock)

    def dribble() -> None:
        while not stop.is_set():
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"X")
            stop.wait(0.2)

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        durations = []
        for body in unique_events(10, "slowloris"):
            started = time.monotonic()
            assert server.post_event(body).status == 202
            durations.append(time.monotonic() - started)
        assert max(durations) < 1.0
    finally:
        stop.set()
        dribbler.join()
        for sock in sockets:
            sock.close()


def test_a_slow_body_gets_a_status_flux_retries(fluxback: Start) -> None:
    server = fluxback()
    server.start()
    body = event_body()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_head(len(body), body) + body[:20])
        answer = server.read_response(sock)  # read_timeout_seconds is 2
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "3"
    assert answer.json()["error"] == "body timeout"


def test_malformed_headers_are_not_echoed_or_logged(fluxback: Start) -> None:
    server = fluxback()
    server.start()
    body = event_body()
    bad_requests = [
        _head(len(body), body, f"Authorization: Bearer {BEARER_TOKEN}\x7f\r\n") + body,
        _head(len(body), body, f"X-Long: {BEARER_TOKEN}{'a' * 9000}\r\n") + body,
        f"POST /flux/events?{BEARER_TOKEN}\x01 HTTP/1.1\r\n\r\n".encode(),
        f"GET /{'b' * 9000}{BEARER_TOKEN} HTTP/1.1\r\n\r\n".encode(),
    ]
    for data in bad_requests:
        answer = server.raw(data)
        assert answer.status == 400
        assert answer.json() == {
            "error": "bad request",
            "detail": "the request line or a header is not valid HTTP/1.1",
        }
    lines = server.log_lines_once("http.malformed_request", len(bad_requests))  # all JSON: no traceback
    refused = [line for line in lines if line["event"] == "http.malformed_request"]
    assert len(refused) == len(bad_requests)
    assert all(line["level"] == "warning" and "exception" not in line for line in refused)
    assert not [line for line in lines if line["level"] == "error"]
    assert server.metric("fluxback_http_malformed_requests_total") == len(bad_requests)


def test_sigterm_mid_body_finishes_the_request(fluxback: Start) -> None:
    server = fluxback()
    server.start()
    body = event_body(name="mid-body")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_head(len(body), body) + body[:30])
        time.sleep(0.2)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = True
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            refused = True
        else:
            refused = False
        sock.sendall(body[30:])
        answer = server.read_response(sock)
    assert refused, "the listener still accepts after SIGTERM"
    assert answer.status == 202
    assert answer.headers.get("Connection") == "close"
    assert server.wait() == 0
    assert journaled_bodies(server.journal_path) == [body]


def _burst(server: Fluxback, bodies: list[bytes], after: int, interrupt: Callable[[], None]) -> list[int]:
    """Post `bodies` from 16 threads, call `interrupt` once `after` were accepted; the statuses.

    Connection errors (the process went away or closed its listener) are not statuses.
    """
    statuses: list[int] = []

    def send(body: bytes) -> None:
        with contextlib.suppress(OSError):
            statuses.append(server.post_event(body, timeout=15).status)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(send, body) for body in bodies]
        while statuses.count(202) < after:
            time.sleep(0.005)
        interrupt()
        for future in futures:
            future.result()
    return statuses


def _accepted(server: Fluxback) -> list[bytes]:
    """The bodies the server answered 202, from the responses it sent."""
    return [body for body, answer in server.answers if answer.status == 202]


def test_sigterm_during_a_burst_loses_nothing(fluxback: Start) -> None:
    """Every answer is a 202 (stored) or something Flux retries: a connection error or a 5xx."""
    server = fluxback()
    server.start()
    assert server.process is not None
    statuses = _burst(server, unique_events(400, "burst-term"), 100, server.process.terminate)
    assert server.wait() == 0
    assert all(status == 202 or status >= 500 for status in statuses), sorted(set(statuses))
    stored = journaled_bodies(server.journal_path)
    assert sorted(stored) == sorted(set(stored))
    assert set(_accepted(server)) <= set(stored)


def test_kill_9_during_a_burst_loses_no_accepted_event(fluxback: Start) -> None:
    server = fluxback()
    server.start()
    assert server.process is not None
    _burst(server, unique_events(600, "burst-kill"), 250, server.process.kill)
    assert server.wait() == -signal.SIGKILL
    accepted = _accepted(server)
    assert len(accepted) >= 250
    server.start()
    for body in accepted:
        answer = server.post_event(body)
        assert (answer.status, answer.json()["duplicate"]) == (202, True)
    stored = journaled_bodies(server.journal_path)
    assert len(stored) == len(set(stored))
    assert set(accepted) <= set(stored)


def test_replayed_and_oversized_bodies(fluxback: Start) -> None:
    """A captured signed body replayed 40 times at once is one delivery; oversized bodies,
    announced or streamed, are 413 without being read into memory."""
    server = fluxback(webhook={"max_body_bytes": 4096})
    server.start()
    body = event_body(name="replayed")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.post_event(body), range(40)))
    assert {a.status for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    big = event_body(name="big", message="x" * 10_000)
    assert server.post_event(big).status == 413
    chunked = _head(0, big).replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
    answer = server.raw(chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
    assert answer.status == 413
    huge = server.raw(_head(10**12, big))
    assert huge.status == 413
    assert journaled_bodies(server.journal_path) == [body]
