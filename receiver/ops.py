"""Operations endpoints: health, readiness, metrics, and the deliveries API.

`/deliveries` answers "what happened to revision X?" from the journal: the
event as Flux sent it, the worker's decisions, the commits and Airflow runs it
correlated, and every action with its result. Replay is the one write endpoint
here and needs an admin token.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import TypeVar

import structlog
from aiohttp import web

from receiver.auth import AdminAuth, CredentialsUnavailable, Forbidden, Unauthorized
from receiver.config import Config
from receiver.explain import AirflowLinks, explained, listed_json, story, story_json
from receiver.health import Affects, Health
from receiver.journal import DeliveryFilter, DeliveryState, Journal, JournalUnavailable
from receiver.metrics import CONTENT_TYPE, Metrics
from receiver.replay import replay
from receiver.responses import json_error, unavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_LIMIT = 1000
MAX_ID = 2**63 - 1
"""The largest row id SQLite (and PostgreSQL bigint) can hold; larger ids cannot exist."""
DELIVERY_ID = "[0-9]{1,19}"
"""A delivery id in a path: ASCII digits only (`\\d` also takes other scripts' digits), at most
19 of them (`MAX_ID` has 19)."""
_ASCII_NUMBER = re.compile(DELIVERY_ID)


OPENAPI = resources.files("receiver").joinpath("openapi.yaml")
"""The HTTP API's description (docs/openapi.yaml links to it), shipped inside the package."""


class BadQuery(Exception):
    """A query parameter is wrong; the message names it."""


def _int_param(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not _ASCII_NUMBER.fullmatch(text):
        raise BadQuery(f"{name}: must be a whole number written in ASCII digits")
    value = int(text)
    if not low <= value <= high:
        raise BadQuery(f"{name}: must be between {low} and {high}")
    return value


def delivery_filter(query: Mapping[str, str]) -> DeliveryFilter:
    """Read the `/deliveries` query: revision, object (Kind/namespace/name), state, dag_id, limit, before.

    Raises:
        BadQuery: naming the parameter.
    """
    obj = query.get("object") or None
    if obj is not None and (obj.count("/") != 2 or not all(obj.split("/"))):
        raise BadQuery("object: must be Kind/namespace/name")
    state_text = query.get("state") or None
    try:
        state = DeliveryState(state_text) if state_text else None
    except ValueError:
        raise BadQuery(f"state: must be one of {', '.join(s.value for s in DeliveryState)}") from None
    return DeliveryFilter(
        revision=query.get("revision") or None,
        object_key=obj,
        state=state,
        dag_id=query.get("dag_id") or None,
        limit=_int_param(query, "limit", 1, MAX_LIMIT) or DeliveryFilter.limit,
        before_id=_int_param(query, "before", 1, MAX_ID),
    )


def airflow_links(config: Config) -> AirflowLinks:
    """Links into the UI of each configured Airflow instance."""
    return AirflowLinks({name: instance.url for name, instance in config.airflow.instances.items()})


class Operations:
    """Handlers for everything but event ingest."""

    def __init__(
        self, config: Config, journal: Journal, metrics: Metrics, admin: AdminAuth, health: Health
    ) -> None:
        self.config = config
        self.journal = journal
        self.metrics = metrics
        self.admin = admin
        self.health = health
        self.links = airflow_links(config)
        self._openapi = OPENAPI.read_bytes()

    async def bounded(self, call: Awaitable[T]) -> T:
        """A journal call within journal_timeout_seconds: a hung commit must not hang the probes.

        Raises:
            JournalUnavailable: the journal failed or did not answer in time.
        """
        deadline = self.config.journal_timeout_seconds
        try:
            async with asyncio.timeout(deadline):
                return await call
        except TimeoutError:
            raise JournalUnavailable(f"no answer within {deadline:g} s") from None

    async def healthz(self, _: web.Request) -> web.Response:
        """The process answers; says nothing about its dependencies (that is /readyz)."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Ready when an event can be accepted and journaled now (see receiver.health)."""
        problems = [f"{c.name}: {c.problem}" for c in await self.health.readiness() if c.problem]
        if problems:
            return unavailable("not ready", "; ".join(problems))
        return web.json_response({"status": "ready"})

    async def health_details(self, _: web.Request) -> web.Response:
        """Every check, ingest and worker side, with what it affects; 200 even when some fail."""
        checks = await self.health.details()
        return web.json_response(
            {
                "ready": all(c.ok for c in checks if c.affects is Affects.INGEST),
                "checks": [
                    {"name": c.name, "affects": c.affects.value, "ok": c.ok, "problem": c.problem}
                    for c in checks
                ],
            }
        )

    async def metrics_text(self, _: web.Request) -> web.Response:
        await self.health.details()
        try:
            depth = await self.bounded(self.journal.depth())
        except Exception as error:  # still serve the other metrics; the gauge keeps its last value
            log.warning("metrics.journal_unavailable", error=str(error))
        else:
            for state in DeliveryState:
                self.metrics.journal_depth.labels(state.value).set(depth.get(state, 0))
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def openapi(self, _: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/yaml", charset="utf-8")

    async def list_deliveries(self, request: web.Request) -> web.Response:
        try:
            query = delivery_filter(request.query)
        except BadQuery as problem:
            return json_error(400, "bad query", str(problem))
        try:
            found = await self.bounded(explained(self.journal, query))
        except JournalUnavailable:
            return unavailable("journal unavailable", "the journal cannot be read right now")
        return web.json_response(
            {
                "deliveries": [listed_json(d) for d in found.deliveries],
                "next_before": found.next_before,
            }
        )

    async def get_delivery(self, request: web.Request) -> web.Response:
        delivery_id = int(request.match_info["id"])
        if delivery_id > MAX_ID:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        try:
            delivery = await self.bounded(self.journal.get(delivery_id))
        except JournalUnavailable:
            return unavailable("journal unavailable", "the journal cannot be read right now")
        if delivery is None:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        return web.json_response(story_json(story(delivery, self.links)))

    async def replay(self, request: web.Request) -> web.Response:
        try:
            self.admin.check(request.headers)
        except Unauthorized as problem:
            return json_error(401, "unauthorized", str(problem), headers={"WWW-Authenticate": "Bearer"})
        except Forbidden as problem:
            return json_error(403, "forbidden", str(problem))
        except CredentialsUnavailable:
            return unavailable("credentials unavailable", "the admin token files cannot be read")
        delivery_id = int(request.match_info["id"])
        if delivery_id > MAX_ID:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        try:
            outcome = await self.bounded(replay(self.journal, [delivery_id], datetime.now(UTC)))
        except JournalUnavailable:
            return unavailable("journal unavailable", "the journal cannot commit right now")
        refused = outcome[delivery_id]
        if refused is not None and not refused.exists:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        if refused is not None:
            return json_error(409, "not finished", f"delivery {delivery_id} {refused.reason}")
        log.info("delivery.replayed", delivery_id=delivery_id, remote=request.remote)
        return web.json_response({"replayed": [delivery_id]}, status=202)
