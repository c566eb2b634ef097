"""Poking a Flux Receiver: the signature Flux checks, and failures that only warn."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from aiohttp import web

from receiver.dags import FluxReceiver

TOKEN = "receiver-token-from-the-flux-secret"
HOOK = "/hook/4f1c1f2c6b1ee0a4e83ca8a6c3c0b8e6f2f3d9d1d5e4c0e7a2b1c3d4e5f60718"


@dataclass
class FakeFlux:
    """A loopback stand-in for the notification-controller's receiver server."""

    url: str
    status: int = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def flux() -> AsyncIterator[FakeFlux]:
    fake = FakeFlux(url="")

    async def hook(request: web.Request) -> web.Response:
        fake.requests.append((request.path, dict(request.headers), await request.read()))
        return web.Response(status=fake.status)

    app = web.Application()
    app.router.add_route("*", "/hook/{digest}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}{HOOK}"
    yield fake
    await runner.cleanup()


DIGEST = HOOK.rsplit("/", 1)[1]
"""For a `generic` Receiver the path is the secret: it must not reach logs or errors."""


async def test_the_poke_is_signed_as_a_generic_hmac_receiver_checks_it(
    flux: FakeFlux, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = FluxReceiver(flux.url, TOKEN)

    with caplog.at_level(logging.INFO, logger="receiver.dags.receiver_poke"):
        ok = await asyncio.to_thread(receiver.poke, {"revision": "main@sha1:abc", "dag_id": "deploy_model"})

    assert ok is True
    assert f"Receiver at {flux.url.split('/hook')[0]} (200)" in caplog.text
    assert DIGEST not in caplog.text
    [(path, headers, body)] = flux.requests
    assert path == HOOK
    expected = hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Signature"] == f"sha256={expected}"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"dag_id": "deploy_model", "revision": "main@sha1:abc"}


async def test_a_refused_poke_only_warns(flux: FakeFlux, caplog: pytest.LogCaptureFixture) -> None:
    flux.status = 503  # Receiver suspended or not ready

    with caplog.at_level(logging.WARNING, logger="receiver.dags.receiver_poke"):
        ok = await asyncio.to_thread(FluxReceiver(flux.url, TOKEN).poke)

    assert ok is False
    assert "answered 503" in caplog.text
    assert "next interval" in caplog.text
    assert DIGEST not in caplog.text


def test_an_unreachable_receiver_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    receiver = FluxReceiver(f"http://127.0.0.1:9{HOOK}", TOKEN)  # the discard port: nothing listens

    with caplog.at_level(logging.WARNING, logger="receiver.dags.receiver_poke"):
        assert receiver.poke(timeout=2) is False

    assert "http://127.0.0.1:9 not reachable" in caplog.text
    assert TOKEN not in caplog.text
    assert DIGEST not in caplog.text


def test_a_malformed_url_only_warns_without_showing_it(caplog: pytest.LogCaptureFixture) -> None:
    receiver = FluxReceiver(f"http://flux.example.com{HOOK} x", TOKEN)  # a space: http.client refuses it

    with caplog.at_level(logging.WARNING, logger="receiver.dags.receiver_poke"):
        assert receiver.poke(timeout=2) is False

    assert "http://flux.example.com not usable (InvalidURL)" in caplog.text
    assert DIGEST not in caplog.text


def test_repr_and_errors_show_the_host_only() -> None:
    receiver = FluxReceiver(f"https://user:pw@flux.example.com:9292{HOOK}", TOKEN)

    assert repr(receiver) == "FluxReceiver(https://flux.example.com:9292)"
    with pytest.raises(ValueError, match="http") as raised:
        FluxReceiver(f"ftp://flux.example.com{HOOK}", TOKEN)
    assert DIGEST not in str(raised.value)


def test_from_a_connection() -> None:
    by_host = SimpleNamespace(host="http://flux/hook/a", password=TOKEN, extra_dejson={})
    by_extra = SimpleNamespace(host="flux", password=TOKEN, extra_dejson={"url": "https://flux/hook/b"})

    assert FluxReceiver.from_connection(by_host) == FluxReceiver("http://flux/hook/a", TOKEN)
    assert FluxReceiver.from_connection(by_extra).url == "https://flux/hook/b"
    assert TOKEN not in repr(FluxReceiver.from_connection(by_host))
    with pytest.raises(ValueError, match="http"):
        FluxReceiver.from_connection(SimpleNamespace(host="flux", password=TOKEN, extra_dejson={}))
    with pytest.raises(ValueError, match="token"):
        FluxReceiver("http://flux/hook/a", "")
