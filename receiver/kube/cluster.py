"""The Kubernetes side as one background service: a client, one watch per kind and namespace,
feeding discovery (which repository and folder each object applies) and the status feed.

Watches run on every replica (appends are idempotent: a status has one
identity in the journal); the periodic full re-lists run only where
`is_leader()` says so: the journal's leadership (a PostgreSQL advisory lock;
with SQLite the one replica always leads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes_asyncio.client import CustomObjectsApi, EventsV1Api

from receiver.config import KubernetesConfig
from receiver.git import ObjectSource
from receiver.journal import Journal
from receiver.kube.client import api_client
from receiver.kube.discovery import Discovery
from receiver.kube.feed import StatusFeed
from receiver.kube.kinds import HELM_RELEASE, KUSTOMIZATION, WATCHED, FluxKind
from receiver.kube.recorder import EventRecorder
from receiver.kube.watch import KindWatch
from receiver.metrics import Metrics

log = structlog.get_logger(__name__)

STATUS_KINDS = (KUSTOMIZATION, HELM_RELEASE)


class Cluster:
    """Watches the Flux kinds and turns status changes into deliveries."""

    def __init__(
        self,
        config: KubernetesConfig,
        journal: Journal,
        metrics: Metrics,
        *,
        discovery: Discovery | None = None,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._config = config
        self.discovery = discovery or Discovery()
        self._metrics = metrics
        self._is_leader = is_leader
        self.feed = StatusFeed(journal, metrics)
        self.recorder = EventRecorder(metrics) if config.events else None
        """Kubernetes Events on the Flux objects (kubernetes.events); None when turned off."""
        self._watches: list[KindWatch] = []
        self._created = time.monotonic()
        self._connect_error = "not started yet"

    def problems(self) -> list[str]:
        """Readiness: a watch that has not been able to list for longer than resync_seconds."""
        limit = self._config.resync_seconds
        if not self._watches:
            waited = time.monotonic() - self._created
            if waited <= limit:
                return []
            return [f"kubernetes: not connected for {waited:.0f}s: {self._connect_error}"]
        return [
            f"kubernetes: cannot list {w.scope} for {w.stale_for():.0f}s: {w.last_error}"
            for w in self._watches
            if w.stale_for() > limit
        ]

    async def handle(self, kind: FluxKind, change: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
        if change == "DELETED":
            self.discovery.remove(kind, namespace, name)
            self.feed.forget(kind, namespace, name)
            return
        self.discovery.update(kind, obj)  # before the status: the worker may take the delivery at once
        if kind in STATUS_KINDS:
            if isinstance(self.discovery.locate(kind.kind, namespace, name), ObjectSource):
                # Its deploys will be correlated: count them from zero, so increase() sees the first.
                self._metrics.track_object(kind.kind, namespace, name)
            await self.feed.observe(kind, obj)

    async def run(self) -> None:
        """Until cancelled."""
        try:
            client = await api_client(self._config)
        except Exception as error:  # no in-cluster environment, an unreadable kubeconfig
            self._connect_error = f"{type(error).__name__}: {error}"
            raise
        try:
            api = CustomObjectsApi(client)
            namespaces: tuple[str | None, ...] = self._config.namespaces or (None,)
            self._watches = [
                KindWatch(
                    api,
                    kind,
                    namespace,
                    self.handle,
                    self._metrics,
                    resync_seconds=self._config.resync_seconds,
                    is_leader=self._is_leader,
                    on_listed=self.discovery.listed,
                )
                for kind in WATCHED
                for namespace in namespaces
            ]
            log.info("kube.watching", kinds=[k.kind for k in WATCHED], namespaces=list(namespaces))
            running = [w.run() for w in self._watches]
            if self.recorder is not None:
                running.append(self.recorder.run(EventsV1Api(client)))
            await asyncio.gather(*running)
        finally:
            await client.close()
