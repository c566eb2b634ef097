"""Operations endpoints: health, readiness, metrics, and the deliveries API.

`/deliveries` answers "what happened to revision X?" from the journal: the
event as Flux sent it, the worker's decisions, the commits and Airflow runs it
correlated, and every action with its result. Replay is the one write endpoint
here and needs an admin token.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from aiohttp import web

from receiver.auth import AdminAuth, CredentialsUnavailable, Forbidden, Unauthorized
from receiver.config import Config
from receiver.health import Affects, Health
from receiver.journal import (
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliverySummary,
    Journal,
    JournalUnavailable,
)
from receiver.metrics import CONTENT_TYPE, Metrics
from receiver.replay import replay
from receiver.responses import json_error, unavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_LIMIT = 1000
_MAX_ID = 2**63 - 1
"""The largest row id SQLite (and PostgreSQL bigint) can hold; larger ids cannot exist."""
DELIVERY_ID = "[0-9]{1,19}"
"""A delivery id in a path: ASCII digits only (`\\d` also takes other scripts' digits), at most
19 of them (`_MAX_ID` has 19)."""
_ASCII_NUMBER = re.compile(DELIVERY_ID)


class _BadQuery(Exception):
    """A query parameter is wrong; the message names it."""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def summary_json(summary: DeliverySummary) -> dict[str, Any]:
    return {
        "id": summary.id,
        "state": summary.state.value,
        "received_at": _iso(summary.received_at),
        "updated_at": _iso(summary.updated_at),
        "object": {
            "kind": summary.kind,
            "namespace": summary.namespace,
            "name": summary.name,
            "key": summary.object_key,
        },
        "reason": summary.reason,
        "severity": summary.severity,
        "outcome": summary.outcome,
        "revision": summary.revision,
        "commit": summary.commit,
        "attempts": summary.attempts,
        "next_attempt_at": _iso(summary.next_attempt_at),
        "duplicate_of": summary.duplicate_of,
        "last_error": summary.last_error,
        "source": summary.source,
    }


def _event_json(body: bytes) -> Any:
    """The event as Flux sent it; bodies were validated on the way in, so this is JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {
        **summary_json(delivery),
        "authenticated_by": delivery.authenticated_by,
        "event": _event_json(delivery.body),
        "decisions": [
            {"at": _iso(d.at), "text": d.text, "fields": dict(d.fields)} for d in delivery.decisions
        ],
        "correlations": [
            {
                "commit": c.commit,
                "committed_at": _iso(c.committed_at),
                "subject": c.subject,
                "dag_id": c.dag_id,
                "run_id": c.run_id,
                "task_ids": list(c.task_ids),
                "map_index": c.map_index,
                "instance": c.instance,
                "verdict": c.verdict,
            }
            for c in delivery.correlations
        ],
        "actions": [
            {
                "key": a.key,
                "kind": a.kind,
                "target": dict(a.target),
                "state": a.state.value,
                "result": a.result,
                "attempts": a.attempts,
                "created_at": _iso(a.created_at),
                "updated_at": _iso(a.updated_at),
            }
            for a in delivery.actions
        ],
    }


def _int_param(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not _ASCII_NUMBER.fullmatch(text):
        raise _BadQuery(f"{name}: must be a whole number written in ASCII digits")
    value = int(text)
    if not low <= value <= high:
        raise _BadQuery(f"{name}: must be between {low} and {high}")
    return value


def _delivery_filter(query: Mapping[str, str]) -> DeliveryFilter:
    """Read the `/deliveries` query: revision, object (Kind/namespace/name), state, dag_id, limit, before.

    Raises:
        _BadQuery: naming the parameter.
    """
    obj = query.get("object") or None
    if obj is not None and (obj.count("/") != 2 or not all(obj.split("/"))):
        raise _BadQuery("object: must be Kind/namespace/name")
    state_text = query.get("state") or None
    try:
        state = DeliveryState(state_text) if state_text else None
    except ValueError:
        raise _BadQuery(f"state: must be one of {', '.join(s.value for s in DeliveryState)}") from None
    return DeliveryFilter(
        revision=query.get("revision") or None,
        object_key=obj,
        state=state,
        dag_id=query.get("dag_id") or None,
        limit=_int_param(query, "limit", 1, MAX_LIMIT) or DeliveryFilter.limit,
        before_id=_int_param(query, "before", 1, _MAX_ID),
    )


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

    async def _bounded(self, call: Awaitable[T]) -> T:
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
            depth = await self._bounded(self.journal.depth())
        except Exception as error:  # still serve the other metrics; the gauge keeps its last value
            log.warning("metrics.journal_unavailable", error=str(error))
        else:
            for state in DeliveryState:
                self.metrics.journal_depth.labels(state.value).set(depth.get(state, 0))
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def list_deliveries(self, request: web.Request) -> web.Response:
        try:
            query = _delivery_filter(request.query)
        except _BadQuery as problem:
            return json_error(400, "bad query", str(problem))
        try:
            found = await self._bounded(self.journal.list(query))
        except JournalUnavailable:
            return unavailable("journal unavailable", "the journal cannot be read right now")
        return web.json_response(
            {
                "deliveries": [summary_json(s) for s in found],
                "next_before": found[-1].id if len(found) == query.limit else None,
            }
        )

    async def get_delivery(self, request: web.Request) -> web.Response:
        delivery_id = int(request.match_info["id"])
        if delivery_id > _MAX_ID:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        try:
            delivery = await self._bounded(self.journal.get(delivery_id))
        except JournalUnavailable:
            return unavailable("journal unavailable", "the journal cannot be read right now")
        if delivery is None:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        return web.json_response(delivery_json(delivery))

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
        if delivery_id > _MAX_ID:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        try:
            outcome = await self._bounded(replay(self.journal, [delivery_id], datetime.now(UTC)))
        except JournalUnavailable:
            return unavailable("journal unavailable", "the journal cannot commit right now")
        refused = outcome[delivery_id]
        if refused is not None and not refused.exists:
            return json_error(404, "not found", f"no delivery {delivery_id}")
        if refused is not None:
            return json_error(409, "not finished", f"delivery {delivery_id} {refused.reason}")
        log.info("delivery.replayed", delivery_id=delivery_id, remote=request.remote)
        return web.json_response({"replayed": [delivery_id]}, status=202)
