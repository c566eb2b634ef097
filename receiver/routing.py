"""`Expect` headers and requests no route takes, answered inside the middleware like the rest.

aiohttp runs a route's expect handler before any middleware. Its default answers an
unknown expectation with a 417 that no metric counts and that quotes the header, and
fails with a 500 when the value is not text (`Expect: \\x80`). Routes here use
`expect_continue` instead, and a last catch-all route answers what matches no route
(404, or 405 with `Allow`) with the same handler, so every answer passes the middleware.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

UNMATCHED = "unmatched"
"""The catch-all route's name; its requests count as `route="unmatched"` in the metrics, as before."""


async def expect_continue(request: web.Request) -> None:
    """`Expect: 100-continue` answered as aiohttp does; any other expectation is ignored, which
    RFC 9110 allows (Flux never sends one)."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


async def _unmatched(request: web.Request) -> web.StreamResponse:
    """404, or 405 naming the methods another route takes on this path."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def add_unmatched_route(app: web.Application) -> None:
    """On start-up, so the catch-all comes after every other route, wherever those are added."""
    app.router.add_route("*", "/{path:.*}", _unmatched, name=UNMATCHED, expect_handler=expect_continue)
