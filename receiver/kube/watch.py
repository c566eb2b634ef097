"""List, then watch, one Flux kind; re-list when the API says the watch is too old.

A watch continues from the resourceVersion of the last list, event or
bookmark. When the API server has compacted past it (410 Gone), the only
correct move is a fresh list; any other failure (connection, 5xx, 403, the
journal refusing an append) also ends in a fresh list after a pause, so a
status change is never skipped. On start-up and then every `resync_seconds`
(only where `is_leader()` says so) the full list catches whatever a watch
could have missed while Fluxback was down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from kubernetes_asyncio.client import CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from receiver.kube.kinds import FluxKind
from receiver.metrics import Metrics

log = structlog.get_logger(__name__)

Handler = Callable[[FluxKind, str, Mapping[str, Any]], Awaitable[None]]
"""Called with the kind, the event type (`LISTED`, `ADDED`, `MODIFIED`, `DELETED`) and the object."""

GONE = 410
MAX_PAUSE_SECONDS = 60.0
CLIENT_GRACE_SECONDS = 15.0
"""The client gives a watch this much longer than the server-side timeout before it gives up."""


def _resource_version(obj: Mapping[str, Any], default: str | None) -> str | None:
    metadata = obj.get("metadata")
    found = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return found if isinstance(found, str) and found else default


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"API {error.status}: {error.reason}"
    return f"{type(error).__name__}: {error}"


class KindWatch:
    """One kind in one namespace (or all namespaces), for as long as it runs."""

    def __init__(
        self,
        api: CustomObjectsApi,
        kind: FluxKind,
        namespace: str | None,
        handle: Handler,
        metrics: Metrics,
        *,
        resync_seconds: float,
        is_leader: Callable[[], bool] = lambda: True,
        on_listed: Callable[[FluxKind], None] = lambda kind: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self._api = api
        self._handle = handle
        self._metrics = metrics
        self._resync = resync_seconds
        self._is_leader = is_leader
        self._on_listed = on_listed
        self._clock = clock
        self.failing_since: float | None = clock()
        """When listing started failing (or the watch started and has not listed yet); None when current."""
        self.last_error = "not listed yet"

    @property
    def scope(self) -> str:
        return f"{self.kind.kind} in {self.namespace or 'all namespaces'}"

    def stale_for(self) -> float:
        """Seconds this watch has been unable to list; 0 while it is current."""
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since

    async def run(self) -> None:
        """Until cancelled."""
        version: str | None = None
        listed_at = 0.0
        pause = 1.0
        while True:
            try:
                if version is None or (self._clock() - listed_at >= self._resync and self._is_leader()):
                    version = await self._list()
                    listed_at = self._clock()
                    self.failing_since = None
                until_resync = self._resync - (self._clock() - listed_at)  # <= 0 only on a follower
                version = await self._follow(version, until_resync if until_resync > 0 else self._resync)
                pause = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # API errors, connections, timeouts, a journal that cannot commit
                version = None
                gone = isinstance(error, ApiException) and error.status == GONE
                self._restarted(_describe(error))
                if not gone:  # 410 is expected after compaction: list again at once
                    await asyncio.sleep(pause)
                    pause = min(MAX_PAUSE_SECONDS, pause * 2)

    def _restarted(self, reason: str) -> None:
        self._metrics.watch_restarts.labels(self.kind.kind).inc()
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = reason
        log.warning("kube.watch_restart", scope=self.scope, error=reason)

    def _call(self, **kwargs: Any) -> Any:
        kind = self.kind
        if self.namespace is None:
            return self._api.list_cluster_custom_object(kind.group, kind.version, kind.plural, **kwargs)
        return self._api.list_namespaced_custom_object(
            kind.group, kind.version, self.namespace, kind.plural, **kwargs
        )

    async def _list(self) -> str | None:
        listing = await self._call()
        for obj in listing.get("items") or ():
            await self._handle(self.kind, "LISTED", obj)
        self._on_listed(self.kind)
        log.info("kube.listed", scope=self.scope, objects=len(listing.get("items") or ()))
        return _resource_version(listing, "")

    async def _follow(self, version: str | None, seconds: float) -> str | None:
        """One watch request from `version` for about `seconds`; the version to continue from."""
        watch = Watch()
        try:
            stream = watch.stream(
                self._call,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=max(1, int(seconds)),
                _request_timeout=seconds + CLIENT_GRACE_SECONDS,
            )
            async for change in stream:
                obj = change["raw_object"]
                version = _resource_version(obj, version)
                if change["type"] != "BOOKMARK":
                    await self._handle(self.kind, change["type"], obj)
        except TimeoutError:
            pass  # the server did not end the watch in time; continue from the last version seen
        finally:
            await watch.close()
        return version
