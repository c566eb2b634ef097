"""Hypothesis over raw HTTP requests against one real `fluxback serve` process.

Bodies (mutated Flux events, lone surrogates, bytes), headers (signatures right and
wrong, bearer tokens with control characters, arbitrary names and bytes, lines over
8 KiB), framing (Content-Length right, short, long, missing, garbage; chunked, valid
and broken) and half-closed sockets. Two runs per CI run, one with a fixed seed and
one random, of FUZZ_EXAMPLES cases each (5,000 by default: 10,000 in all).

Invariants: no 5xx, the process never dies, nothing is journaled without valid
credentials, and every answer is counted in the metrics (each request once in
`fluxback_http_request_duration_seconds` or `fluxback_http_malformed_requests_total`,
each answer of the event handler once in `fluxback_events_received_total`).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.flux_replay import sign
from tests.fuzz_strategies import bodies
from tests.reliability.conftest import BEARER_TOKEN, HMAC_KEY, Fluxback, journaled_bodies

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5000"))
FIXED_SEED = 20261201

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
header_bytes = st.binary(max_size=40)


@dataclass(frozen=True)
class Case:
    data: bytes
    method: str
    path: str
    body: bytes
    authentic: bool
    """Carries a valid signature or bearer token and no wrong credential."""
    half_close: bool


# Strategies are built once: hypothesis validates each new strategy object on first use,
# which would cost more than sending the request.
METHODS = st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"])
PATHS = (
    st.sampled_from(["/flux/events"] * 10 + ["/flux/events?a=b", "/flux/%65vents", "/flux/events/"])
    | st.sampled_from(["/readyz", "/healthz/details", "/deliveries?limit=\u0661", "/deliveries/1"])
    | st.builds(lambda s: "/deliveries/" + s, printable)
)
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])
SIGNATURES = st.sampled_from(["valid", "wrong", "garbage", "none", "sha512"])
TOKENS = st.sampled_from(["valid", "wrong", "control", "none", "none"])
WRONG_TOKENS = st.binary(min_size=1, max_size=30)
EXTRA_COUNT = st.integers(0, 3)
EXTRA_NAMES = st.sampled_from([b"X-Extra", b"Gotk-Component", b"Content-Encoding", b"Expect"]) | header_bytes
EXTRA_VALUES = header_bytes | st.sampled_from([b"gzip", b"identity", b"100-continue", b"x" * 9000])
FRAMINGS = st.sampled_from(["length"] * 6 + ["chunked", "broken-chunked", "none", "short", "long", "bad"])
BAD_LENGTHS = st.sampled_from([b"-1", b"1e3", b"0x10", b"1 2", b"99999999999999999999"])


@st.composite
def requests(draw: st.DrawFn) -> Case:
    body = draw(bodies)
    method = draw(METHODS)
    path = draw(PATHS)
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"fluxback")]
    content_type = draw(CONTENT_TYPES)
    if content_type:
        headers.append((b"Content-Type", content_type.encode()))
    signature = draw(SIGNATURES)
    token = draw(TOKENS)
    if signature == "valid":
        headers.append((b"X-Signature", sign(body, HMAC_KEY).encode()))
    elif signature == "sha512":
        headers.append((b"X-Signature", sign(body, HMAC_KEY, "sha512").encode()))
    elif signature == "wrong":
        headers.append((b"X-Signature", sign(body, b"not-the-key").encode()))
    elif signature == "garbage":
        headers.append((b"X-Signature", draw(header_bytes)))
    if token == "valid":
        headers.append((b"Authorization", f"Bearer {BEARER_TOKEN}".encode()))
    elif token == "wrong":
        headers.append((b"Authorization", b"Bearer " + draw(WRONG_TOKENS)))
    elif token == "control":  # aiohttp's parser refuses it; its message would quote the token
        headers.append((b"Authorization", f"Bearer {BEARER_TOKEN}\x7f".encode()))
    for _ in range(draw(EXTRA_COUNT)):
        headers.append((draw(EXTRA_NAMES), draw(EXTRA_VALUES)))
    framing = draw(FRAMINGS)
    payload = body
    if framing in ("length", "short", "long"):
        length = len(body) + {"length": 0, "short": -min(len(body), 3), "long": 5}[framing]
        headers.append((b"Content-Length", str(length).encode()))
    elif framing == "bad":
        headers.append((b"Content-Length", draw(BAD_LENGTHS)))
    elif framing in ("chunked", "broken-chunked"):
        headers.append((b"Transfer-Encoding", b"chunked"))
        middle = len(body) // 2
        chunks = [body[:middle], body[middle:]]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
        if framing == "broken-chunked":
            payload = b"zz\r\n" + payload
    headers.append((b"Connection", b"close"))
    head = method.encode() + b" " + path.encode() + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    wrong = signature in ("wrong", "garbage") or token in ("wrong", "control")
    authentic = (signature in ("valid", "sha512") or token == "valid") and not wrong
    # A body that cannot end (too long a Content-Length) is only sent with the write side closed.
    return Case(head + payload, method, path, body, authentic, half_close=framing == "long")


@dataclass
class Tally:
    """What the client saw, to compare with what the server counted."""

    statuses: Counter[int] = field(default_factory=Counter)
    ingest_answers: int = 0
    ingest_disconnects: int = 0
    disconnects: int = 0
    accepted: set[bytes] = field(default_factory=set)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fluxback]:
    root = tmp_path_factory.mktemp("fuzz")
    # The journal on /dev/shm when there is one: its fsyncs cost nothing, and the fuzzing is
    # about the front door, not the disk (the fault tests are).
    memory = Path("/dev/shm")
    journal_folder = Path(tempfile.mkdtemp(dir=memory)) if memory.is_dir() else root
    fluxback = Fluxback(root, {"journal": f"sqlite://{journal_folder}/journal.db"})
    fluxback.start()
    yield fluxback
    try:
        fluxback.assert_no_secret_leaked()
    finally:
        fluxback.stop()
        if journal_folder != root:
            shutil.rmtree(journal_folder)


def _is_ingest(case: Case) -> bool:
    return case.method == "POST" and unquote(case.path.split("?")[0]) == "/flux/events"


def _send(server: Fluxback, case: Case, tally: Tally) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(case.data)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
            answer = server.read_response(sock, case.method)
        except (ConnectionError, http.client.RemoteDisconnected):
            assert case.half_close, "the server closed a connection without answering"
            tally.disconnects += 1
            tally.ingest_disconnects += _is_ingest(case)
            return
    assert answer.status < 500, (answer.status, answer.body[:200], case.data[:300])
    tally.statuses[answer.status] += 1
    if _is_ingest(case) and not (answer.status == 400 and answer.json()["error"] == "bad request"):
        tally.ingest_answers += 1  # the event handler answered, not aiohttp's parser
    if answer.status == 202:
        assert case.authentic, "journaled without valid credentials"
        tally.accepted.add(case.body)


def _counted(metrics: str) -> tuple[Counter[str], float]:
    """Requests counted per status class (parser refusals as 4xx), and event handler answers."""
    by_class: Counter[str] = Counter()
    events = 0.0
    for line in metrics.splitlines():
        if line.startswith("fluxback_http_request_duration_seconds_count{"):
            status_class = line.split('status_class="')[1].split('"')[0]
            by_class[status_class] += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("fluxback_http_malformed_requests_total "):
            by_class["4xx"] += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("fluxback_events_received_total{"):
            events += float(line.rsplit(" ", 1)[1])
    return by_class, events


def _fuzz(server: Fluxback, fixed_seed: int | None) -> None:
    tally = Tally()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def run(case: Case) -> None:
        _send(server, case, tally)

    stored_before = set(journaled_bodies(server.journal_path))
    before, events_before = _counted(server.metrics())
    before["2xx"] += 1  # that /metrics request itself
    (seed(fixed_seed)(run) if fixed_seed is not None else run)()
    after, events_after = _counted(server.metrics())
    assert server.process is not None and server.process.poll() is None, "the server died"
    assert server.request("GET", "/healthz").status == 200
    seen: Counter[str] = Counter()
    for status, count in tally.statuses.items():
        seen[f"{status // 100}xx"] += count
    counted = after - before
    for status_class, count in seen.items():
        assert count <= counted[status_class] <= count + tally.disconnects, status_class
    assert sum(counted.values()) <= sum(seen.values()) + tally.disconnects
    counted_events = events_after - events_before
    assert tally.ingest_answers <= counted_events <= tally.ingest_answers + tally.ingest_disconnects
    stored = journaled_bodies(server.journal_path)
    assert len(stored) == len(set(stored))
    # Every new row was answered 202 to a request with valid credentials, and every 202 is stored.
    assert set(stored) - stored_before <= tally.accepted <= set(stored)


def test_fuzz_with_a_fixed_seed(server: Fluxback) -> None:
    _fuzz(server, FIXED_SEED)


def test_fuzz_with_a_random_seed(server: Fluxback) -> None:
    _fuzz(server, None)
