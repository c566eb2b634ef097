"""The aiohttp Application: routes, the error/metrics middleware, and the service's lifetime.

`build_app` wires handlers to an already open journal and is what tests use.
`serve` is the process: it refuses to start on configuration problems, opens
the journal (which migrates it), starts background services next to the HTTP
server, and on SIGTERM stops taking requests, finishes the ones in flight,
then stops the background services and closes the journal.

Background services plug in as async context managers: entering one starts it
(and returns promptly), leaving it stops it. They are entered in order when
the app starts and left in reverse order when it stops.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, contextmanager

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Histogram

from receiver.auth import AdminAuth, WebhookAuth
from receiver.config import Config, startup_problems
from receiver.health import AppendOutcomes, Health
from receiver.ingest import EventIngest
from receiver.journal import Journal, journal_from_url
from receiver.listener import FrontDoor, connection_args
from receiver.metrics import Metrics
from receiver.ops import DELIVERY_ID, Operations, airflow_links
from receiver.page import StatusPage
from receiver.readiness import ReadinessChecks
from receiver.responses import json_error
from receiver.routing import UNMATCHED, add_unmatched_route, expect_continue
from receiver.secrets import FileSecret

log = structlog.get_logger(__name__)

Background = AbstractAsyncContextManager[object]
"""A service that runs next to the HTTP server (the worker, the reconciler, retention)."""
BackgroundFactory = Callable[[Config, Journal, Metrics, ReadinessChecks], Sequence[Background]]
"""Builds the background services from what `serve` opened; they may add readiness checks."""

SHUTDOWN_TIMEOUT_SECONDS = 10.0
"""How long requests being read or handled may take to finish on SIGTERM (then the background
services stop); Kubernetes waits 30 s by default."""

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupError(Exception):
    """The service must not start; `problems` name the configuration keys."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _error_middleware(metrics: Metrics) -> Middleware:
    """JSON bodies for every error (404, 405, unexpected exceptions) and the request duration metric."""

    durations: dict[tuple[str, str], Histogram] = {}
    """Per (route, status class): labels() takes a lock and checks its values on every call."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except web.HTTPException as error:  # raised by aiohttp itself: no route, wrong method, too large
            headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
            detail = f"{request.method} {request.path}: {error.reason}"
            response = json_error(error.status, error.reason.lower(), detail, headers=headers)
        except Exception:
            log.exception("http.internal_error", method=request.method, path=request.path)
            response = json_error(500, "internal error", "an unexpected error happened; see the service log")
        matched = request.match_info.route
        resource = None if matched.name == UNMATCHED else matched.resource
        route = resource.canonical if resource is not None else UNMATCHED
        labels = (route, f"{response.status // 100}xx")
        duration = durations.get(labels)
        if duration is None:
            duration = durations[labels] = metrics.http_request_duration.labels(*labels)
        duration.observe(time.perf_counter() - started)
        return response

    return middleware


def _background_context(
    services: Sequence[Background],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(_: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for service in services:
                await stack.enter_async_context(service)
            yield

    return run


def build_app(
    config: Config,
    journal: Journal,
    *,
    metrics: Metrics | None = None,
    background: Sequence[Background] = (),
    readiness: ReadinessChecks | None = None,
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The Application for `config`, on an open `journal` (the caller opens and closes it).

    Args:
        metrics: shared with the background services; a fresh registry when None.
        background: started when the app starts, stopped (in reverse order) when it stops.
        readiness: checks the background services added for `/readyz`.
        middlewares: run outside the error middleware (the listener's connection tracking).
    """
    metrics = metrics or Metrics()
    app = web.Application(
        middlewares=[*middlewares, _error_middleware(metrics)],
        client_max_size=config.webhook.max_body_bytes,
        handler_args={
            **connection_args(config.webhook),
            # A client that goes away does not cancel a handler half-way through its decision.
            "handler_cancellation": False,
        },
    )
    appends = AppendOutcomes()
    ingest = _event_ingest(config, journal, metrics, appends)
    ops = Operations(
        config,
        journal,
        metrics,
        AdminAuth([FileSecret(p) for p in config.admin_tokens]),
        Health(config, journal, metrics, appends, readiness or ReadinessChecks()),
    )
    _add_routes(app.router, ingest, ops, StatusPage(journal, airflow_links(config), ops.bounded))
    app.on_startup.append(add_unmatched_route)
    if background:
        app.cleanup_ctx.append(_background_context(background))
    return app


def _event_ingest(config: Config, journal: Journal, metrics: Metrics, appends: AppendOutcomes) -> EventIngest:
    """`POST /flux/events`, verifying with the webhook's key and token files."""
    webhook = config.webhook
    auth = WebhookAuth(
        [FileSecret(p) for p in webhook.hmac_keys],
        [FileSecret(p) for p in webhook.bearer_tokens],
        allow_unauthenticated=webhook.allow_unauthenticated,
    )
    return EventIngest(
        webhook,
        auth,
        journal,
        metrics,
        journal_timeout_seconds=config.journal_timeout_seconds,
        appends=appends,
    )


def _add_routes(router: web.UrlDispatcher, ingest: EventIngest, ops: Operations, page: StatusPage) -> None:
    """Every route, each answering `Expect: 100-continue` itself (see receiver/routing.py)."""
    delivery = f"/deliveries/{{id:{DELIVERY_ID}}}"
    routes: list[tuple[Callable[..., web.AbstractRoute], str, Handler]] = [
        (router.add_post, "/flux/events", ingest.handle),
        (router.add_get, "/healthz", ops.healthz),
        (router.add_get, "/healthz/details", ops.health_details),
        (router.add_get, "/readyz", ops.readyz),
        (router.add_get, "/metrics", ops.metrics_text),
        (router.add_get, "/openapi.yaml", ops.openapi),
        (router.add_get, "/deliveries", ops.list_deliveries),
        (router.add_get, delivery, ops.get_delivery),
        (router.add_post, f"{delivery}/replay", ops.replay),
        (router.add_get, "/", page.index),
        (router.add_get, f"{delivery}/story", page.delivery),
    ]
    for add, path, handler in routes:
        add(path, handler, expect_handler=expect_continue)


async def serve(
    config: Config,
    *,
    background: BackgroundFactory | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the service until SIGTERM/SIGINT (or until `stop` is set).

    Raises:
        StartupError: secret files cannot be read, no authentication is configured, or the
            address is taken.
        JournalUnavailable: the journal cannot be opened.
    """
    _check_startup(config)
    journal = journal_from_url(config.journal, config.journal_password_file, serving=True)
    await journal.open()
    stop = stop or asyncio.Event()
    try:
        with _stop_on_signals(stop):
            metrics = Metrics()
            readiness = ReadinessChecks()
            services = background(config, journal, metrics, readiness) if background else ()
            door = FrontDoor(config.webhook, metrics)
            app = build_app(
                config,
                journal,
                metrics=metrics,
                background=services,
                readiness=readiness,
                middlewares=[door.middleware],
            )
            await _serve_http(config, app, door, stop)
    finally:
        await journal.close()


def _check_startup(config: Config) -> None:
    """Refuse to start on configuration problems; warn loudly when anyone may post events."""
    problems = startup_problems(config)
    if problems:
        raise StartupError(problems)
    if config.webhook.allow_unauthenticated:
        log.warning(
            "webhook.unauthenticated",
            hint="webhook.allow_unauthenticated is true: anyone who reaches the port can post events",
        )


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` while the service runs, and are the loop's own again after."""
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def _serve_http(config: Config, app: web.Application, door: FrontDoor, stop: asyncio.Event) -> None:
    """Serve `app` through `door` until `stop`, then let requests in flight finish."""
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        try:
            await door.open(runner, config.listen_host, config.listen_port)
        except OSError as error:
            address = f"{config.listen_host}:{config.listen_port}"
            raise StartupError([f"listen: cannot listen on {address}: {error.strerror}"]) from None
        where = {"host": config.listen_host, "port": config.listen_port, "journal": str(config.journal)}
        log.info("http.listening", **where, max_connections=door.cap)
        await stop.wait()
        log.info("http.stopping", grace_seconds=SHUTDOWN_TIMEOUT_SECONDS)
        await door.drain(SHUTDOWN_TIMEOUT_SECONDS)
    finally:
        door.close()
        await runner.cleanup()


def run(config: Config, *, background: BackgroundFactory | None = None) -> None:
    """`fluxback serve`: `serve` in a fresh event loop."""
    asyncio.run(serve(config, background=background))
