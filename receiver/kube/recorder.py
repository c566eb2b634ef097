"""Kubernetes Events on the Flux objects, so `kubectl describe kustomization` shows what Fluxback did.

kubernetes_asyncio has no event recorder, so this is the part of Go's
events.k8s.io recorder Fluxback needs:

- one `events.k8s.io/v1` Event per new (object, type, action, reason), with
  `reportingController` `fluxback.io/fluxback` and `reportingInstance` the pod;
- a repeat within `SERIES_WINDOW_SECONDS` of the last one becomes a `series`
  (count + lastObservedTime) patched onto the existing Event, not a new object;
- a token bucket per object (burst 25, one more every 5 minutes, as Go's
  legacy recorder) caps what one object can cost the API server.

Recording is best effort: `record` only queues and never raises or waits, and
a post that fails is counted and logged, never retried into the action path.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog
from kubernetes_asyncio.client import EventsV1Api, EventsV1Event, V1ObjectMeta, V1ObjectReference
from kubernetes_asyncio.client.exceptions import ApiException

from receiver.events import ObjectRef
from receiver.metrics import Metrics

log = structlog.get_logger(__name__)

REPORTING_CONTROLLER = "fluxback.io/fluxback"
SERIES_WINDOW_SECONDS = 6 * 60.0
"""A repeat later than this after the last one starts a new Event (client-go's series window)."""
BURST = 25
REFILL_SECONDS = 300.0
QUEUE_SIZE = 1000
POST_TIMEOUT_SECONDS = 5.0
MAX_NOTE = 1024
MAX_NAME = 128

EventType = Literal["Normal", "Warning"]


def reporting_instance() -> str:
    """The pod's name (Kubernetes sets HOSTNAME to it), within the API's 128-character limit."""
    return (os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or "fluxback")[:MAX_NAME]


@dataclass(frozen=True, kw_only=True)
class Occurrence:
    regarding: ObjectRef
    reason: str
    action: str
    note: str
    type: EventType = "Normal"

    @property
    def series_key(self) -> tuple[str, ...]:
        obj = self.regarding
        return (obj.kind, obj.namespace, obj.name, obj.uid, self.type, self.action, self.reason)


@dataclass
class _Series:
    name: str
    count: int
    last_seen: float


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default=0.0)


class EventRecorder:
    """Queues Events and posts them from `run`, folding repeats into series."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._instance = instance or reporting_instance()
        self._clock = clock
        self._wall_clock = wall_clock
        self._queue: asyncio.Queue[Occurrence] = asyncio.Queue(QUEUE_SIZE)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._buckets: dict[str, _Bucket] = {}

    def record(
        self, regarding: ObjectRef, *, reason: str, action: str, note: str, type: EventType = "Normal"
    ) -> None:
        """Queue one Event; never raises, never waits for the API."""
        try:
            self._queue.put_nowait(
                Occurrence(regarding=regarding, reason=reason, action=action, note=note, type=type)
            )
        except asyncio.QueueFull:
            self._count(reason, "failed")
            log.warning("kube.event_dropped", reason=reason, object=regarding.key, error="queue full")

    async def run(self, api: EventsV1Api) -> None:
        """Post queued Events until cancelled."""
        while True:
            occurrence = await self._queue.get()
            await self.post(api, occurrence)

    async def post(self, api: EventsV1Api, occurrence: Occurrence) -> None:
        """One Event (or one series update); failures are counted and logged, never raised."""
        if not self._take_token(occurrence.regarding.key):
            self._count(occurrence.reason, "rate_limited")
            self._remember(occurrence)
            return
        try:
            series = self._series.get(occurrence.series_key)
            now = self._clock()
            if series is not None and now - series.last_seen <= SERIES_WINDOW_SECONDS:
                series.count += 1
                series.last_seen = now
                if await self._patch_series(api, occurrence, series):
                    self._count(occurrence.reason, "recorded")
                    return
            name = await self._create(api, occurrence)
        except Exception as error:  # 403 without RBAC, 5xx, connection errors: the action stands regardless
            self._count(occurrence.reason, "failed")
            status = error.status if isinstance(error, ApiException) else type(error).__name__
            log.warning(
                "kube.event_failed", reason=occurrence.reason, object=occurrence.regarding.key, error=status
            )
            return
        self._series[occurrence.series_key] = _Series(name=name, count=1, last_seen=self._clock())
        self._count(occurrence.reason, "recorded")

    def _remember(self, occurrence: Occurrence) -> None:
        """A rate-limited repeat still counts in its series, so the next update carries the true count."""
        series = self._series.get(occurrence.series_key)
        if series is not None:
            series.count += 1
            series.last_seen = self._clock()

    def _take_token(self, object_key: str) -> bool:
        now = self._clock()
        bucket = self._buckets.setdefault(object_key, _Bucket(tokens=BURST, updated=now))
        bucket.tokens = min(BURST, bucket.tokens + (now - bucket.updated) / REFILL_SECONDS)
        bucket.updated = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    async def _create(self, api: EventsV1Api, occurrence: Occurrence) -> str:
        obj = occurrence.regarding
        name = f"{obj.name}.{secrets.token_hex(8)}"
        event = EventsV1Event(
            metadata=V1ObjectMeta(name=name, namespace=obj.namespace),
            event_time=self._wall_clock(),
            reporting_controller=REPORTING_CONTROLLER,
            reporting_instance=self._instance,
            action=occurrence.action[:MAX_NAME],
            reason=occurrence.reason[:MAX_NAME],
            note=occurrence.note[:MAX_NOTE],
            type=occurrence.type,
            regarding=V1ObjectReference(
                api_version=obj.api_version or None,
                kind=obj.kind,
                namespace=obj.namespace,
                name=obj.name,
                uid=obj.uid or None,
            ),
        )
        await api.create_namespaced_event(obj.namespace, event, _request_timeout=POST_TIMEOUT_SECONDS)
        return name

    async def _patch_series(self, api: EventsV1Api, occurrence: Occurrence, series: _Series) -> bool:
        """False when the Event is gone (Events expire after an hour): the caller creates a new one."""
        last_observed = self._wall_clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        patch = {"series": {"count": series.count, "lastObservedTime": last_observed}}
        try:
            await api.patch_namespaced_event(
                series.name, occurrence.regarding.namespace, patch, _request_timeout=POST_TIMEOUT_SECONDS
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def _count(self, reason: str, outcome: str) -> None:
        self._metrics.kube_events.labels(reason, outcome).inc()
