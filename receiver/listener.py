"""The listening socket and the connections on it: deadlines, a cap, clean refusals, a drain.

aiohttp handles HTTP; this module decides who gets a connection and for how long.

- A connection must deliver its request line and headers within
  `webhook.header_timeout_seconds`, and an idle keep-alive connection is closed after
  the same time (aiohttp's `keepalive_timeout` covers both: its timer is not reset by
  bytes that do not complete a request). The body has `webhook.read_timeout_seconds`
  (see receiver.ingest).
- At most `webhook.max_connections` connections are open, lowered to fit the file
  descriptor limit, so `accept()` never runs out of descriptors. Past the cap the oldest
  connections that are not handling a request (idle, or still sending headers) are
  closed to make room: the service keeps answering Flux and the probes.
- A request aiohttp's parser refuses (bad request line or header, a line over 8,190
  bytes) gets a generic JSON 400 and one warning line; aiohttp's default would echo the
  raw line, which may hold a credential, into the body and an error log with a traceback.
  aiohttp offers no hook for these (aio-libs/aiohttp#3287), so the connection protocol
  is aiohttp's public `RequestHandler` with `handle_error` overridden.
- On SIGTERM the listener closes first; requests already being read or handled finish
  (their bodies keep arriving) within the grace period, and answers carry
  `Connection: close`. aiohttp's own shutdown stops reading at once, which turned a body
  in flight into a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_request import BaseRequest

from receiver.config import WebhookConfig
from receiver.metrics import Metrics
from receiver.responses import json_error

log = structlog.get_logger(__name__)

BACKLOG = 64
"""Kernel accept queue; also how many connections asyncio accepts in one go."""
DESCRIPTOR_RESERVE = 2 * BACKLOG + 64
"""Descriptors kept free of connections: one accept burst beyond the cap, connections being
closed, and the journal, log and git files the process needs."""
MIN_CONNECTIONS = 16


def connection_args(webhook: WebhookConfig) -> dict[str, Any]:
    """aiohttp `RequestHandler` arguments for every connection (the app's and the listener's)."""
    return {
        # One deadline for a request's line and headers and for an idle keep-alive connection.
        "keepalive_timeout": webhook.header_timeout_seconds,
        # Bodies are read as sent: the HMAC covers the bytes on the wire, and a compressed
        # body could expand past max_body_bytes.
        "auto_decompress": False,
        # Ingest logs one line per decision instead.
        "access_log": None,
    }


def connection_cap(configured: int) -> int:
    """`configured`, lowered so that connections cannot use up the file descriptors.

    The soft descriptor limit is first raised to the hard one, as Go programs do.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY:
        return configured
    return min(configured, max(MIN_CONNECTIONS, soft - DESCRIPTOR_RESERVE))


class _Connection(web.RequestHandler):
    """aiohttp's connection protocol; only requests its parser refuses are answered differently."""

    __slots__ = ("_door",)

    def __init__(self, manager: web.Server, door: FrontDoor, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._door = door

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._door.opened(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._door.lost(self)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # The parser's message quotes the offending line, which may carry a credential.
        self._door.metrics.http_malformed.inc()
        log.warning("http.malformed_request", error=type(exc).__name__, remote=request.remote)
        response = json_error(400, "bad request", "the request line or a header is not valid HTTP/1.1")
        response.force_close()
        return response


class FrontDoor:
    """Owns the listening socket: accepts under the cap, and drains on shutdown."""

    def __init__(self, webhook: WebhookConfig, metrics: Metrics) -> None:
        self.webhook = webhook
        self.metrics = metrics
        self.cap = connection_cap(webhook.max_connections)
        self._open: dict[web.RequestHandler, None] = {}
        """Open connections, oldest first."""
        self._busy: set[web.RequestHandler] = set()
        """Connections handling a request now."""
        self._closing: set[web.RequestHandler] = set()
        """Connections closed to make room, until their transport reports them lost."""
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._at_cap = False
        self._draining = False
        self._all_closed = asyncio.Event()
        metrics.open_connections.set_function(lambda: len(self._open))

    @property
    def middleware(self) -> Middleware:
        """Marks connections that are handling a request; `Connection: close` while draining."""

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            connection = request.protocol
            self._busy.add(connection)
            try:
                response = await handler(request)
            finally:
                self._busy.discard(connection)
            if self._draining:
                response.force_close()
            return response

        return track

    async def open(self, runner: web.AppRunner, host: str, port: int) -> None:
        """Start listening (after `runner.setup()`).

        Raises:
            OSError: the address cannot be bound.
        """
        assert runner.server is not None, "runner.setup() first"
        self._server = runner.server
        if self.cap < self.webhook.max_connections:
            log.warning(
                "webhook.max_connections lowered to fit the file-descriptor limit",
                configured=self.webhook.max_connections,
                cap=self.cap,
            )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._accept, host, port, backlog=BACKLOG, reuse_address=True
        )

    def _accept(self) -> web.RequestHandler:
        assert self._server is not None
        self._make_room()
        return _Connection(
            self._server, self, loop=asyncio.get_running_loop(), **connection_args(self.webhook)
        )

    def opened(self, connection: web.RequestHandler) -> None:
        self._open[connection] = None

    def lost(self, connection: web.RequestHandler) -> None:
        self._open.pop(connection, None)
        self._closing.discard(connection)
        if not self._open:
            self._all_closed.set()

    def _make_room(self) -> None:
        """Close the oldest connections that handle no request until one more fits under the cap."""
        open_now = [c for c in self._open if c not in self._closing]
        excess = len(open_now) + 1 - self.cap
        if excess <= 0:
            if self._at_cap and len(open_now) < self.cap * 0.9:
                self._at_cap = False
                log.info("http.connections_below_limit", open=len(open_now), cap=self.cap)
            return
        if not self._at_cap:
            self._at_cap = True
            log.warning(
                "http.connection_limit_reached",
                hint="closing the oldest connections that handle no request",
                cap=self.cap,
            )
        for connection in open_now:
            if excess <= 0:
                break
            if connection in self._busy:
                continue
            self._closing.add(connection)
            connection.force_close()
            self.metrics.connections_evicted.inc()
            excess -= 1

    async def drain(self, grace_seconds: float) -> None:
        """Stop listening, then wait (at most `grace_seconds`) for open connections to finish.

        Requests being read or handled complete; idle keep-alive connections close at
        their header deadline, or when `runner.cleanup()` runs after this.
        """
        self._draining = True
        self.close()
        if not self._open:
            return
        self._all_closed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self._all_closed.wait()

    def close(self) -> None:
        """Stop accepting connections; the open ones are left alone."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
