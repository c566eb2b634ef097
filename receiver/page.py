"""The read-only status page: recent deliveries at `/`, one delivery's story at
`/deliveries/{id}/story`.

Server-rendered HTML with no script and no external asset, so it works through
`kubectl port-forward` or behind a path prefix: every link is relative. The
templates are Jinja2 with autoescaping on for every template, because object
names, revisions, commit subjects and event messages come from outside and a
single forgotten `html.escape` would be a hole; autoescaping makes escaping the
default and `|safe` (never used here) the visible exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol, TypeVar

import jinja2
from aiohttp import web

from receiver.explain import AirflowLinks, explained, story
from receiver.journal import DeliveryState, Journal, JournalUnavailable
from receiver.ops import MAX_ID, BadQuery, delivery_filter

T = TypeVar("T")


class Bounded(Protocol):
    """Runs a journal call within the service's journal deadline (`Operations.bounded`)."""

    def __call__(self, call: Awaitable[T], /) -> Awaitable[T]: ...


PAGE_SIZE = 50
_FILTERS = ("revision", "object", "state", "dag_id")

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("receiver", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _html(template: str, context: Mapping[str, object], status: int = 200) -> web.Response:
    body = _TEMPLATES.get_template(template).render(context)
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    # Nothing on these pages needs a script, a frame or a foreign origin; say so to the browser.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


class StatusPage:
    """Handlers for the HTML pages; everything they show comes from `receiver.explain`."""

    def __init__(self, journal: Journal, links: AirflowLinks, bounded: Bounded) -> None:
        self._journal = journal
        self._links = links
        self._bounded = bounded

    async def index(self, request: web.Request) -> web.Response:
        chosen = {name: request.query.get(name, "") for name in _FILTERS}
        base: dict[str, object] = {
            "filters": chosen,
            "states": [s.value for s in DeliveryState],
            "error": None,
            "rows": [],
            "older": None,
        }
        query_params = {k: v for k, v in request.query.items() if k in (*_FILTERS, "before")}
        try:
            query = delivery_filter({"limit": str(PAGE_SIZE), **query_params})
        except BadQuery as problem:
            return _html("index.html", {**base, "error": str(problem)}, 400)
        try:
            page = await self._bounded(explained(self._journal, query))
        except JournalUnavailable:
            return _html("index.html", {**base, "error": "the journal cannot be read right now"}, 503)
        older = None
        if page.next_before is not None:
            older = {**{k: v for k, v in chosen.items() if v}, "before": str(page.next_before)}
        rows = [story(d, self._links) for d in page.deliveries]
        return _html("index.html", {**base, "rows": rows, "older": older})

    async def delivery(self, request: web.Request) -> web.Response:
        delivery_id = int(request.match_info["id"])  # the route allows ASCII digits, 19 at most
        if delivery_id > MAX_ID:
            return _html("missing.html", {"text": f"no delivery {delivery_id}"}, 404)
        try:
            found = await self._bounded(self._journal.get(delivery_id))
        except JournalUnavailable:
            return _html("missing.html", {"text": "the journal cannot be read right now"}, 503)
        if found is None:
            return _html("missing.html", {"text": f"no delivery {delivery_id}"}, 404)
        return _html("delivery.html", {"told": story(found, self._links)})
