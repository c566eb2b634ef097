"""POST /flux/events over real HTTP on loopback, into a real SQLite journal."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from receiver.config import LogConfig
from receiver.journal import DeliveryFilter
from receiver.journal.sqlite import SqliteJournal
from receiver.log import configure_logging
from tests.flux_replay import EXAMPLES, event_body, flux_headers, payload, sign
from tests.helpers import BEARER_TOKEN, HMAC_KEY, Service, make_config, running

SHA = "3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345"


@pytest.mark.parametrize("name", EXAMPLES)
async def test_every_example_is_accepted_and_journaled(service: Service, name: str) -> None:
    body = payload(name)
    status, answer, _ = await service.post_event(body)
    assert status == 202
    assert answer == {"id": answer["id"], "duplicate": False}
    stored = await service.journal.get(answer["id"])
    assert stored is not None
    assert stored.body == body
    assert stored.authenticated_by == "hmac"
    event = json.loads(body)
    assert stored.object_key == "/".join(event["involvedObject"][k] for k in ("kind", "namespace", "name"))
    assert stored.reason == event["reason"]
    assert stored.revision == event["metadata"]["revision"]


async def test_stored_outcome_and_commit(service: Service) -> None:
    expected = {
        "a_kustomization_reconciliation_succeeded": ("success", SHA),
        "d_helmrelease_upgrade_succeeded": ("success", "3b9f1c2a7d4e"),
        "e_helmrelease_upgrade_failed": ("failure", "9c0d1e2f3a4b"),
        "g_ocirepository_new_artifact": ("progress", None),
    }
    for name, (outcome, commit) in expected.items():
        _, answer, _ = await service.post_event(payload(name))
        stored = await service.journal.get(answer["id"])
        assert stored is not None
        assert (stored.outcome, stored.commit) == (outcome, commit)


async def test_202_means_committed(service: Service, tmp_path: Path) -> None:
    _, answer, _ = await service.post_event(payload("c_kustomization_health_check_failed"))
    other = SqliteJournal(tmp_path / "journal.db")
    await other.open()
    try:
        assert await other.get(answer["id"]) is not None
    finally:
        await other.close()


async def test_the_same_body_again_is_a_duplicate(service: Service) -> None:
    body = payload("a_kustomization_reconciliation_succeeded")
    _, first, _ = await service.post_event(body)
    status, again, _ = await service.post_event(body)
    assert status == 202
    assert again == {"id": first["id"], "duplicate": True}


async def test_a_heartbeat_success_is_a_duplicate(service: Service) -> None:
    _, first, _ = await service.post_event(event_body(message="Reconciliation finished in 1s"))
    status, again, _ = await service.post_event(event_body(message="Reconciliation finished in 2s"))
    assert status == 202
    assert again["duplicate"] is True
    stored = await service.journal.get(again["id"])
    assert stored is not None
    assert stored.duplicate_of == first["id"]


async def test_bearer_token(service: Service) -> None:
    body = event_body()
    status, _, _ = await service.post_event(body, flux_headers(body, bearer=BEARER_TOKEN))
    assert status == 202
    status, answer, _ = await service.post_event(body, flux_headers(body, bearer="not-the-token"))
    assert status == 401
    assert "not-the-token" not in json.dumps(answer)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "X-Signature": sign(b"{}", HMAC_KEY)},
        {"Content-Type": "application/json", "X-Signature": "sha256=" + "00" * 32},
        {"Content-Type": "application/json", "X-Signature": "md5=00"},
        {"Content-Type": "application/json", "Authorization": "Basic Zm9vOmJhcg=="},
    ],
)
async def test_401_for_missing_or_bad_credentials(service: Service, headers: dict[str, str]) -> None:
    status, answer, _ = await service.post_event(event_body(), headers)
    assert status == 401
    assert set(answer) == {"error", "detail"}
    assert answer["error"] == "unauthorized"
    assert await service.journal.list(DeliveryFilter()) == []


async def test_a_signature_over_other_bytes_is_refused(service: Service) -> None:
    """The HMAC covers the exact bytes: the same JSON with other spacing is another body."""
    body = payload("a_kustomization_reconciliation_succeeded")
    respaced = json.dumps(json.loads(body)).encode()
    headers = flux_headers(respaced)
    headers["X-Signature"] = sign(body, HMAC_KEY)
    status, _, _ = await service.post_event(respaced, headers)
    assert status == 401


@pytest.mark.parametrize(
    ("place", "field"),
    [
        ("name", "involvedObject.name"),
        ("kind", "involvedObject.kind"),
        ("reason", "reason"),
        ("revision", "metadata.revision"),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_the_field(service: Service, place: str, field: str) -> None:
    values = {"name": "a", "kind": "Kustomization", "reason": "ReconciliationSucceeded", "revision": "main"}
    values[place] = values[place] + "\udc00"
    text = json.dumps(
        {
            "involvedObject": {"kind": values["kind"], "namespace": "ns", "name": values["name"]},
            "severity": "info",
            "timestamp": "2026-08-10T09:15:42Z",
            "reason": values["reason"],
            "metadata": {"revision": values["revision"]},
            "reportingController": "kustomize-controller",
        }
    )
    body = text.encode("ascii")  # json.dumps escapes the surrogate as \udc00, as a sender could
    status, answer, _ = await service.post_event(body)
    assert (status, answer["error"]) == (400, "malformed event")
    assert answer["detail"].startswith(f"{field}: ")
    assert service.metrics.events_received.labels("malformed")._value.get() == 1
    assert service.metrics.events_received.labels("journal_unavailable")._value.get() == 0


async def test_400_names_the_field(service: Service) -> None:
    raw = json.loads(payload("a_kustomization_reconciliation_succeeded"))
    del raw["involvedObject"]["kind"]
    status, answer, _ = await service.post_event(json.dumps(raw).encode())
    assert status == 400
    assert answer == {"error": "malformed event", "detail": "involvedObject.kind: is required"}
    status, answer, _ = await service.post_event(b"[]")
    assert (status, answer["detail"]) == (400, "body: must be a JSON object")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_415_when_not_json(service: Service, content_type: str | None) -> None:
    body = event_body()
    headers = flux_headers(body, hmac_key=HMAC_KEY)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    status, answer, _ = await service.post_event(body, headers)
    assert status == 415
    assert answer["error"] == "unsupported media type"


async def test_a_charset_parameter_is_fine(service: Service) -> None:
    body = event_body()
    headers = flux_headers(body, hmac_key=HMAC_KEY)
    headers["Content-Type"] = "application/json; charset=utf-8"
    status, _, _ = await service.post_event(body, headers)
    assert status == 202


@pytest.fixture
async def small(tmp_path: Path, journal: SqliteJournal) -> AsyncIterator[Service]:
    config = make_config(tmp_path, webhook={"max_body_bytes": 1000, "read_timeout_seconds": 0.3})
    async with running(config, journal) as svc:
        yield svc


def _big_body() -> bytes:
    return event_body(message="x" * 2000)


async def test_413_from_content_length(small: Service) -> None:
    status, answer, _ = await small.post_event(_big_body())
    assert status == 413
    assert answer == {"error": "body too large", "detail": "the limit is 1000 bytes (max_body_bytes)"}


async def test_413_while_streaming_a_chunked_body(small: Service) -> None:
    body = _big_body()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 300):
            yield body[start : start + 300]

    headers = flux_headers(body, hmac_key=HMAC_KEY)
    async with small.session.post(f"{small.url}/flux/events", data=chunks(), headers=headers) as response:
        assert "Content-Length" not in response.request_info.headers
        assert response.status == 413


async def _raw_request(service: Service, head: bytes, body: bytes) -> tuple[bytes, dict[str, Any]]:
    """Send bytes on a socket and read one response: for clients that misbehave on purpose."""
    url = URL(service.url)
    assert url.host is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status_line, json.loads(await reader.readexactly(length))
    finally:
        writer.close()


def _head(content_length: int) -> bytes:
    return (
        b"POST /flux/events HTTP/1.1\r\nHost: fluxback\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % content_length
    )


async def test_413_without_reading_the_body(small: Service) -> None:
    """A huge Content-Length is refused from the headers: no body byte is ever sent."""
    status_line, answer = await _raw_request(small, _head(10**12), b"")
    assert b" 413 " in status_line
    assert answer["error"] == "body too large"


async def test_503_when_the_body_is_too_slow(small: Service) -> None:
    """A slow network is not the sender's fault: Flux retries a 503 (never a 408)."""
    status_line, answer = await _raw_request(small, _head(500), b'{"involvedObject":')
    assert b" 503 " in status_line
    assert answer == {"error": "body timeout", "detail": "the body did not arrive within 0.3 s; retry"}
    assert small.metrics.events_received.labels("timeout")._value.get() == 1


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
async def test_415_for_compressed_bodies(service: Service, encoding: str) -> None:
    """The signature covers the bytes Flux sends, which are never compressed."""
    body = event_body()
    headers = {**flux_headers(body, hmac_key=HMAC_KEY), "Content-Encoding": encoding}
    status, answer, _ = await service.post_event(b"\x1f\x8b not really compressed", headers)
    assert status == 415
    assert answer["detail"].startswith("Content-Encoding must be identity")


async def test_a_client_that_goes_away_mid_body(service: Service, reset_logging: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    url = URL(service.url)
    assert url.host is not None
    assert url.port is not None
    _, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(_head(500) + b'{"involvedObject":')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(500):  # up to 5 s: a loaded machine may take a while to notice the closed connection
        if out.getvalue():
            break
        await asyncio.sleep(0.01)
    (line,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (line["event"], line["status"], line["error"]) == ("event.refused", 400, "incomplete body")


async def test_503_when_the_journal_cannot_commit(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    await journal.close()
    async with running(make_config(tmp_path), journal) as svc:
        status, answer, headers = await svc.post_event(event_body())
    assert status == 503
    assert headers["Retry-After"] == "3"
    assert answer["error"] == "journal unavailable"
    assert "sqlite" not in answer["detail"].lower()


async def test_503_when_no_key_file_can_be_read(tmp_path: Path, journal: SqliteJournal) -> None:
    config = make_config(tmp_path)
    async with running(config, journal) as svc:
        os.remove(config.webhook.hmac_keys[0])
        status, answer, headers = await svc.post_event(event_body())
    assert status == 503
    assert "Retry-After" in headers
    assert str(tmp_path) not in answer["detail"]


async def test_unauthenticated_when_allowed(tmp_path: Path, journal: SqliteJournal) -> None:
    config = make_config(
        tmp_path, webhook={"hmac_keys": [], "bearer_tokens": [], "allow_unauthenticated": True}
    )
    async with running(config, journal) as svc:
        status, answer, _ = await svc.post_event(event_body(), {"Content-Type": "application/json"})
    assert status == 202
    stored = await journal.get(answer["id"])
    assert stored is not None
    assert stored.authenticated_by == "unauthenticated"


async def test_stale_events_are_refused_when_the_check_is_on(tmp_path: Path, journal: SqliteJournal) -> None:
    config = make_config(tmp_path, webhook={"max_clock_skew_seconds": 300})
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with running(config, journal) as svc:
        status, answer, _ = await svc.post_event(event_body(timestamp="2022-09-30T06:40:29Z"))
        assert status == 400
        assert answer["error"] == "stale event"
        assert answer["detail"].startswith("timestamp: ")
        status, _, _ = await svc.post_event(event_body(timestamp=now))
        assert status == 202


async def test_key_rotation_while_running(tmp_path: Path, journal: SqliteJournal) -> None:
    secrets = tmp_path / "rotating"
    secrets.mkdir()
    (secrets / "current").write_bytes(b"key-one\n")
    (secrets / "next").write_bytes(b"key-two\n")
    config = make_config(tmp_path, webhook={"hmac_keys": [str(secrets / "current"), str(secrets / "next")]})
    async with running(config, journal) as svc:

        async def status_with(key: bytes, message: str) -> int:
            body = event_body(message=message)
            status, _, _ = await svc.post_event(body, flux_headers(body, hmac_key=key))
            return status

        assert await status_with(b"key-one", "1") == 202
        assert await status_with(b"key-two", "2") == 202
        # Kubernetes swaps the mounted file: the first key is retired, a third one is added.
        (secrets / "current.new").write_bytes(b"key-three\n")
        os.replace(secrets / "current.new", secrets / "current")
        assert await status_with(b"key-one", "3") == 401
        assert await status_with(b"key-two", "4") == 202
        assert await status_with(b"key-three", "5") == 202


async def test_one_log_line_per_request_without_secrets(service: Service, reset_logging: None) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    body = payload("a_kustomization_reconciliation_succeeded")
    await service.post_event(body)
    await service.post_event(body, flux_headers(body, bearer="wrong-bearer-value"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["event.accepted", "event.refused"]
    accepted, refused = lines
    assert accepted["object"] == "Kustomization/flux-system/data-pipelines"
    assert accepted["revision"] == f"main@sha1:{SHA}"
    assert accepted["reason"] == "ReconciliationSucceeded"
    assert isinstance(accepted["delivery_id"], int)
    assert refused["status"] == 401
    text = out.getvalue()
    for secret in (HMAC_KEY.decode(), BEARER_TOKEN, "wrong-bearer-value", sign(body, HMAC_KEY)):
        assert secret not in text


async def test_results_are_counted(service: Service) -> None:
    body = event_body()
    await service.post_event(body)
    await service.post_event(body)
    await service.post_event(body, {"Content-Type": "application/json"})
    metrics = service.metrics.exposition().decode()
    assert 'fluxback_events_received_total{result="accepted"} 1.0' in metrics
    assert 'fluxback_events_received_total{result="duplicate"} 1.0' in metrics
    assert 'fluxback_events_received_total{result="unauthorized"} 1.0' in metrics
    assert 'fluxback_events_received_total{result="malformed"} 0.0' in metrics


async def test_a_hung_commit_is_a_503_in_time_and_the_probes_still_answer(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    """Another process holding the journal's write lock is a commit that hangs: ingest
    answers 503 + Retry-After within journal_timeout_seconds, the probes within theirs, and
    reads, which have a connection of their own, are not held up at all."""
    config = make_config(tmp_path, journal_timeout_seconds=0.5)
    blocker = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    body = event_body()
    try:
        async with running(config, journal) as svc:
            started = time.monotonic()
            status, answer, headers = await svc.post_event(body)
            assert (status, answer["error"]) == (503, "journal unavailable")
            assert headers["Retry-After"] == "3"
            assert time.monotonic() - started < 1.5
            for path, expected in (("/readyz", 503), ("/deliveries", 200), ("/deliveries/1", 404)):
                started = time.monotonic()
                status, answer = await svc.get(path)
                assert status == expected, path
                assert time.monotonic() - started < 1.5, path
            assert await svc.get("/healthz") == (200, {"status": "ok"})
            assert svc.metrics.events_received.labels("journal_timeout")._value.get() == 1
            blocker.execute("ROLLBACK")
            # The cut-off append may commit late; Flux's retry then gets the same id, stored once.
            status, answer, _ = await svc.post_event(body)
            assert status == 202
            assert len(await journal.list(DeliveryFilter())) == 1
            assert await svc.get("/readyz") == (200, {"status": "ready"})
    finally:
        blocker.close()
