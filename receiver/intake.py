"""One Flux event -> one journal entry, the same way for every source.

A webhook body and a change of a Flux object's status seen through the
Kubernetes API both become a `NewDelivery` here, so they share the outcome
classification and the dedupe key: a webhook and a status change for the
same (object, revision, outcome) are acted on once, whichever comes first.
"""

from __future__ import annotations

from datetime import datetime

from receiver.events import FluxEvent, classify, dedupe_key, event_commit
from receiver.journal import NewDelivery


def new_delivery(
    event: FluxEvent,
    *,
    body: bytes,
    identity: str,
    received_at: datetime,
    authenticated_by: str,
    source: str,
) -> NewDelivery:
    """The journal entry for `event`.

    Args:
        body: what the worker parses again (`receiver.events.parse_event`).
        identity: the exact-repeat key (the body's SHA-256 for a webhook).
        authenticated_by: how the sender was verified (`hmac`, `bearer`, `kubernetes`, ...).
        source: `webhook` or `kubernetes`.
    """
    outcome = classify(event)
    obj = event.involved_object
    return NewDelivery(
        body=body,
        body_sha256=identity,
        received_at=received_at,
        kind=obj.kind,
        namespace=obj.namespace,
        name=obj.name,
        reason=event.reason,
        severity=event.severity,
        outcome=outcome.value,
        revision=event.revision,
        commit=event_commit(event),
        dedupe_key=dedupe_key(event, outcome),
        authenticated_by=authenticated_by,
        source=source,
    )
