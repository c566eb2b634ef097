"""The Application around the handlers: JSON errors everywhere, background services, serve()."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from receiver.app import Background, StartupError, build_app, serve
from receiver.config import Config, LogConfig, parse_config
from receiver.journal import Journal
from receiver.journal.sqlite import SqliteJournal
from receiver.log import configure_logging
from receiver.metrics import Metrics
from receiver.readiness import ReadinessChecks
from tests.flux_replay import event_body, flux_headers, post_event
from tests.helpers import HMAC_KEY, Service, free_port, make_config, running


async def test_unknown_route_is_a_json_404(service: Service) -> None:
    status, answer = await service.get("/nothing/here")
    assert status == 404
    assert answer == {"error": "not found", "detail": "GET /nothing/here: Not Found"}


async def test_wrong_method_is_a_json_405(service: Service) -> None:
    async with service.session.get(f"{service.url}/flux/events") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["error"] == "method not allowed"


@pytest.mark.parametrize("expect", ["\x80", "whatever", "100-continue"])
@pytest.mark.parametrize(
    ("method", "path", "status"), [("POST", "/flux/events", 202), ("GET", "/nothing", 404)]
)
async def test_any_expect_header_is_answered_and_counted(
    service: Service, expect: str, method: str, path: str, status: int
) -> None:
    """aiohttp's default answered an unknown expectation outside the middleware (a 417 that
    no metric counted) and a value that is not text with a 500."""
    url = URL(service.url)
    assert url.host is not None and url.port is not None
    body = event_body() if method == "POST" else b""
    headers = flux_headers(body, hmac_key=HMAC_KEY) if body else {}
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(head.encode() + b"Expect: " + expect.encode("latin-1") + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    final = answer.split(b"\r\n\r\n", 2)[-2 if expect == "100-continue" else 0]
    assert final.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    route, status_class = ("/flux/events", "2xx") if status == 202 else ("unmatched", "4xx")
    histogram = service.metrics.http_request_duration.labels(route, status_class)
    assert histogram._sum.get() > 0  # counted by the middleware


async def test_unexpected_errors_are_a_json_500_without_internals(
    config: Config, journal: SqliteJournal
) -> None:
    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("internal detail: /etc/fluxback/hmac/token")

    app = build_app(config, journal)
    app.router.add_get("/broken", broken)
    server = aiohttp.test_utils.TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/broken")) as response:
            assert response.status == 500
            answer = await response.json()
    finally:
        await server.close()
    assert answer["error"] == "internal error"
    assert "internal detail" not in answer["detail"]


class _Recorder:
    """A background service that records when it is started and stopped."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __aenter__(self) -> _Recorder:
        self.log.append(f"start {self.name}")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.log.append(f"stop {self.name}")


async def test_background_services_start_and_stop_in_order(config: Config, journal: SqliteJournal) -> None:
    log: list[str] = []
    async with running(config, journal, background=[_Recorder("a", log), _Recorder("b", log)]) as svc:
        assert log == ["start a", "start b"]
        assert (await svc.get("/healthz"))[0] == 200
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_serve_runs_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    config = make_config(tmp_path, listen=f"127.0.0.1:{port}")
    log: list[str] = []

    def services(
        cfg: Config, journal: Journal, metrics: Metrics, readiness: ReadinessChecks
    ) -> Sequence[Background]:
        return [_Recorder("worker", log)]

    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, background=services, stop=stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                status, answer = await post_event(
                    session, f"{url}/flux/events", event_body(), hmac_key=HMAC_KEY
                )
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        assert status == 202
    stop.set()
    await asyncio.wait_for(task, 10)
    assert log == ["start worker", "stop worker"]
    reopened = SqliteJournal(tmp_path / "journal.db")
    await reopened.open()
    try:
        assert await reopened.get(answer["id"]) is not None
    finally:
        await reopened.close()


async def test_serve_refuses_to_start_on_startup_problems(tmp_path: Path) -> None:
    config = parse_config({"journal": f"sqlite://{tmp_path}/journal.db"}, environ={})
    with pytest.raises(StartupError) as caught:
        await serve(config)
    assert caught.value.problems == [
        "webhook: no hmac_keys and no bearer_tokens; set one, or allow_unauthenticated: true"
    ]
    assert not (tmp_path / "journal.db").exists()


async def test_serve_says_when_the_address_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, listen=f"127.0.0.1:{port}")
        with pytest.raises(StartupError) as caught:
            await serve(config)
    (problem,) = caught.value.problems
    assert problem.startswith(f"listen: cannot listen on 127.0.0.1:{port}: ")


async def test_serve_warns_when_unauthenticated_events_are_allowed(
    tmp_path: Path, reset_logging: None
) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    config = make_config(
        tmp_path, listen=f"127.0.0.1:{free_port()}", webhook={"hmac_keys": [], "allow_unauthenticated": True}
    )
    stop = asyncio.Event()
    stop.set()
    await serve(config, stop=stop)
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["level"] == "warning"
    assert first["event"] == "webhook.unauthenticated"
    assert first["hint"].startswith("webhook.allow_unauthenticated is true")
