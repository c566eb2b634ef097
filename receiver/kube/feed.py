"""Status changes of Flux objects -> journal entries, next to the webhook.

Each report goes through the same journal append and dedupe as a webhook
(`receiver.intake`), marked with the source `kubernetes`. A status already
appended by this process is not appended again on every re-list; after a
restart the journal's own exact-repeat key (the status identity) keeps a
re-listed status from becoming a second entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from receiver.intake import new_delivery
from receiver.journal import Journal
from receiver.kube.kinds import FluxKind
from receiver.kube.status import event_body, status_report
from receiver.metrics import Metrics

log = structlog.get_logger(__name__)

SOURCE = "kubernetes"


class StatusFeed:
    """Appends the success or failure a Flux object's status reports, once per status."""

    def __init__(
        self, journal: Journal, metrics: Metrics, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._journal = journal
        self._metrics = metrics
        self._clock = clock
        self._appended: dict[str, str] = {}
        """object key -> identity of the last status appended by this process."""

    async def observe(self, kind: FluxKind, obj: Mapping[str, Any]) -> None:
        """Raises JournalUnavailable when the journal cannot commit (the watch re-lists later)."""
        report = status_report(kind, obj)
        if report is None:
            return
        key = f"{kind.kind}/{report.namespace}/{report.name}"
        if self._appended.get(key) == report.identity:
            return
        now = self._clock()
        event = report.event(now)
        delivery = new_delivery(
            event,
            body=event_body(event),
            identity=report.identity,
            received_at=now,
            authenticated_by=SOURCE,
            source=SOURCE,
        )
        result = await self._journal.append(delivery)
        self._appended[key] = report.identity
        outcome = "duplicate" if result.duplicate else "accepted"
        self._metrics.status_changes.labels(kind.kind, outcome).inc()
        log.info(
            "status.change",
            result=outcome,
            delivery_id=result.id,
            duplicate_of=result.duplicate_of,
            object=key,
            reason=delivery.reason,
            outcome=delivery.outcome,
            revision=delivery.revision,
            commit=delivery.commit,
        )

    def forget(self, kind: FluxKind, namespace: str, name: str) -> None:
        """The object was deleted: a new object of the same name starts afresh."""
        self._appended.pop(f"{kind.kind}/{namespace}/{name}", None)
