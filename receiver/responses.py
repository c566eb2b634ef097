"""The one shape of every error answer: `{"error": "...", "detail": "..."}`.

Flux copies a failed delivery's response body into a Kubernetes Event on the
Alert, so bodies stay short, say what to fix, and never echo a credential.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

RETRY_AFTER_SECONDS = 3
"""Sent with 503. Flux replaces its own backoff with it and gives up after its 15 s budget."""
_MAX_DETAIL = 300


def json_error(
    status: int, error: str, detail: str = "", *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": error, "detail": detail[:_MAX_DETAIL]}, status=status, headers=headers)


def unavailable(error: str, detail: str) -> web.Response:
    """503 with `Retry-After`: a temporary problem on our side that a retry may get past."""
    return json_error(503, error, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
