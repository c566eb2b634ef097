"""A Flux object's status -> the Flux event it stands for (or nothing).

The cluster remembers what Flux's webhook may have lost: a Kustomization with
Ready=True at `lastAppliedRevision` applied that revision; Ready=False with a
failure reason at `lastAttemptedRevision` failed it. A HelmRelease says the
same through its Ready condition and its newest `history` entry. The event
built here carries the same object, reason and revision metadata Flux's own
event would, so both get the same outcome and dedupe key in the journal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from receiver.events import FluxEvent, ObjectRef, Outcome, classify
from receiver.kube.kinds import HELM_RELEASE, KUSTOMIZATION, FluxKind

REPORTING_CONTROLLER = "fluxback-status-watch"
"""Names the source in the event body: this event was read from the status, not sent by Flux."""

_INFO_WHEN_NOT_READY = frozenset({"DependencyNotReady", "HealthCheckCanceled", "Progressing"})
"""Ready=False reasons Flux reports as info events: waiting, not failing."""


@dataclass(frozen=True, kw_only=True)
class StatusReport:
    """What one status says about one revision; `identity` is the same for the same status."""

    kind: FluxKind
    namespace: str
    name: str
    uid: str
    ready: bool
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    since: str = ""
    """The Ready condition's lastTransitionTime: a flip back to an earlier status is news again."""

    @property
    def revision(self) -> str:
        return self.metadata.get("revision", "")

    @property
    def identity(self) -> str:
        text = "\n".join(
            (
                "kubernetes",
                f"{self.kind.kind}/{self.namespace}/{self.name}",
                self.uid,
                self.reason,
                json.dumps(dict(self.metadata), sort_keys=True),
                self.since,
            )
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def event(self, observed_at: datetime) -> FluxEvent:
        return FluxEvent(
            involved_object=ObjectRef(
                kind=self.kind.kind,
                namespace=self.namespace,
                name=self.name,
                api_version=self.kind.api_version,
                uid=self.uid,
            ),
            severity="info" if self.ready or self.reason in _INFO_WHEN_NOT_READY else "error",
            timestamp=observed_at,
            message=self.message,
            reason=self.reason,
            reporting_controller=REPORTING_CONTROLLER,
            metadata=self.metadata,
        )

    def outcome(self) -> Outcome:
        return classify(self.event(datetime.fromtimestamp(0, UTC)))  # the time does not classify


def event_body(event: FluxEvent) -> bytes:
    """The event as Flux would POST it, so the worker and `/deliveries` read both sources alike."""
    obj = event.involved_object
    document = {
        "involvedObject": {
            "kind": obj.kind,
            "namespace": obj.namespace,
            "name": obj.name,
            "apiVersion": obj.api_version,
            "uid": obj.uid,
        },
        "severity": event.severity,
        "timestamp": event.timestamp.isoformat().replace("+00:00", "Z"),
        "message": event.message,
        "reason": event.reason,
        "reportingController": event.reporting_controller,
        "metadata": dict(event.metadata),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _ready(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _newest_history(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    entries = [e for e in status.get("history") or () if isinstance(e, Mapping)]
    if not entries:
        return None
    return max(entries, key=lambda e: e["version"] if isinstance(e.get("version"), int) else -1)


def _kustomization_metadata(status: Mapping[str, Any], ready: bool) -> dict[str, str]:
    if ready:
        meta = {"revision": _text(status.get("lastAppliedRevision"))}
        origin = _text(status.get("lastAppliedOriginRevision"))
        if origin:
            meta["originRevision"] = origin
        return meta
    return {"revision": _text(status.get("lastAttemptedRevision"))}


def _helmrelease_metadata(status: Mapping[str, Any], ready: bool) -> dict[str, str]:
    newest = _newest_history(status)
    if ready and newest is not None and newest.get("status") == "deployed":
        meta = {"revision": _text(newest.get("chartVersion"))}
        app_version, digest = _text(newest.get("appVersion")), _text(newest.get("ociDigest"))
    else:
        meta = {"revision": _text(status.get("lastAttemptedRevision"))}
        app_version, digest = "", _text(status.get("lastAttemptedRevisionDigest"))
    if app_version:
        meta["app-version"] = app_version
    if digest:
        meta["oci-digest"] = digest
    return meta


def status_report(kind: FluxKind, obj: Mapping[str, Any]) -> StatusReport | None:
    """The success or failure the object's status reports; None while progressing or without a revision."""
    status = obj.get("status")
    metadata = obj.get("metadata")
    if not isinstance(status, Mapping) or not isinstance(metadata, Mapping):
        return None
    condition = _ready(status)
    if condition is None or condition.get("status") not in ("True", "False"):
        return None
    ready = condition.get("status") == "True"
    if kind == KUSTOMIZATION:
        meta = _kustomization_metadata(status, ready)
    elif kind == HELM_RELEASE:
        meta = _helmrelease_metadata(status, ready)
    else:
        return None
    if not meta["revision"]:
        return None
    report = StatusReport(
        kind=kind,
        namespace=_text(metadata.get("namespace")),
        name=_text(metadata.get("name")),
        uid=_text(metadata.get("uid")),
        ready=ready,
        reason=_text(condition.get("reason")) or ("info" if ready else "error"),
        message=_text(condition.get("message")),
        metadata=meta,
        since=_text(condition.get("lastTransitionTime")),
    )
    if report.outcome() not in (Outcome.SUCCESS, Outcome.FAILURE):
        return None
    return report
