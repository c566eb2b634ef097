"""The Flux event model: parsing, the commit a revision names, and what an event means.

Flux's notification-controller POSTs one `eventv1.Event` (fluxcd/pkg `apis/event/v1beta1`)
per request, re-encoded as compact JSON by its forwarder (`internal/notifier/forwarder.go`).
Parsing is lenient where Flux is (absent `metadata`, unknown keys) and strict
where a wrong value would mislead the worker (severity, object identity,
timestamp); every refusal names the JSON field so the 400 says what to fix.

Classification turns (kind, severity, reason) into an `Outcome` with explicit
tables taken from the controllers' reason lists (kustomize-controller
`internal/controller/kustomization_controller.go`, helm-controller `api/v2/condition_types.go`
and `internal/reconcile/`, source-controller's condition reasons), so a reader can check every
reason against its source. Judgement calls are commented where the
tables are defined.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

SEVERITIES = ("info", "error")
"""`trace` exists in Flux but is never forwarded to notification providers."""

_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHART_SHORT_SHA = re.compile(r"[^+]+\+([0-9a-f]{12})(?:\.\d+)?")
"""A chart version built from a Git source with `reconcileStrategy: Revision`: `1.4.2+<first 12 hex
of the commit>`, optionally `.<generation>` (source-controller's `helmchart_controller.go`)."""


class Outcome(StrEnum):
    """What an event says about the revision it carries."""

    SUCCESS = "success"
    """The revision is applied (and healthy, when the object waits for health)."""
    FAILURE = "failure"
    """Applying the revision failed."""
    PROGRESS = "progress"
    """Flux is working on the revision; no final word yet."""
    IGNORE = "ignore"
    """Nothing to say about the revision that authored commits."""


class EventInvalid(Exception):
    """The body is not a Flux event; `field` is the JSON path of the first problem."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    """The Flux object an event is about (`involvedObject`)."""

    kind: str
    namespace: str
    name: str
    api_version: str = ""
    uid: str = ""
    resource_version: str = ""

    @property
    def api_group(self) -> str:
        """The group part of `apiVersion`; versions change across Flux releases, groups do not."""
        group, slash, _ = self.api_version.partition("/")
        return group if slash else ""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class FluxEvent:
    involved_object: ObjectRef
    severity: str
    timestamp: datetime
    message: str
    reason: str
    reporting_controller: str
    reporting_instance: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Unprefixed keys as notification-controller forwards them (`revision`, `originRevision`, ...)."""

    @property
    def revision(self) -> str | None:
        return self.metadata.get("revision") or None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""Built once: `json.loads` with any option builds a new decoder (and its scanner) per call."""


def _text(value: str, path: str) -> str:
    """`value`, if it is text: JSON's `\\ud800` escapes can produce lone surrogates, which no
    encoder (UTF-8, SQLite, PostgreSQL) accepts, so they are the sender's error, not ours."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventInvalid(path, "contains a lone UTF-16 surrogate escape, which is not text") from None
    return value


def _string(raw: Mapping[str, Any], name: str, path: str, *, required: bool = True) -> str:
    value = raw.get(name)
    if value is None:
        if required:
            raise EventInvalid(path, "is required")
        return ""
    if not isinstance(value, str):
        raise EventInvalid(path, f"must be a string, got {type(value).__name__}")
    if required and not value:
        raise EventInvalid(path, "must not be empty")
    return _text(value, path)


def _object_ref(raw: Any) -> ObjectRef:
    if raw is None:
        raise EventInvalid("involvedObject", "is required")
    if not isinstance(raw, Mapping):
        raise EventInvalid("involvedObject", "must be an object")

    def text(name: str, *, required: bool = True) -> str:
        return _string(raw, name, f"involvedObject.{name}", required=required)

    return ObjectRef(
        kind=text("kind"),
        namespace=text("namespace"),
        name=text("name"),
        api_version=text("apiVersion", required=False),
        uid=text("uid", required=False),
        resource_version=text("resourceVersion", required=False),
    )


def _timestamp(raw: Mapping[str, Any]) -> datetime:
    text = _string(raw, "timestamp", "timestamp")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise EventInvalid("timestamp", "must be an RFC 3339 time such as 2026-08-10T09:15:42Z") from None
    if value.tzinfo is None:
        raise EventInvalid("timestamp", "must carry a time zone (Flux sends UTC with Z)")
    return value


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise EventInvalid("metadata", "must be an object of strings")
    for key, value in raw.items():
        path = f"metadata.{_text(key, 'metadata')}"
        if not isinstance(value, str):
            raise EventInvalid(path, f"must be a string, got {type(value).__name__}")
        _text(value, path)
    return dict(raw)


def parse_event(body: bytes) -> FluxEvent:
    """Parse and validate one event body.

    Raises:
        EventInvalid: naming the first field that is wrong (`body` when it is not a JSON object).
    """
    try:
        raw = _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise EventInvalid("body", "is not UTF-8") from None
    except (ValueError, RecursionError):
        raise EventInvalid("body", "is not valid JSON") from None
    if not isinstance(raw, dict):
        raise EventInvalid("body", "must be a JSON object")
    severity = _string(raw, "severity", "severity")
    if severity not in SEVERITIES:
        raise EventInvalid("severity", "must be info or error")
    return FluxEvent(
        involved_object=_object_ref(raw.get("involvedObject")),
        severity=severity,
        timestamp=_timestamp(raw),
        message=_string(raw, "message", "message", required=False),
        reason=_string(raw, "reason", "reason"),
        reporting_controller=_string(raw, "reportingController", "reportingController"),
        reporting_instance=_string(raw, "reportingInstance", "reportingInstance", required=False),
        metadata=_metadata(raw.get("metadata")),
    )


def commit_from_revision(revision: str | None) -> str | None:
    """The 40-hex Git commit a Flux revision names, or None (formats of fluxcd/pkg `git/git.go`).

    `<ref>@sha1:<hex>`, `sha1:<hex>` and the legacy `<branch>/<hex>` or bare `<hex>`
    name a commit; `@sha256:` and `sha256:` are OCI or Bucket digests, never commits.
    """
    if not revision:
        return None
    if ":" in revision:
        algorithm, _, digest = revision.rsplit("@", 1)[-1].partition(":")
        return digest if algorithm == "sha1" and _SHA1.fullmatch(digest) else None
    digest = revision.rsplit("/", 1)[-1]
    return digest if _SHA1.fullmatch(digest) else None


def chart_short_sha(revision: str | None) -> str | None:
    """The 12-hex short commit in a HelmRelease chart version such as `1.4.2+3b9f1c2a7d4e.3`."""
    match = _CHART_SHORT_SHA.fullmatch(revision or "")
    return match.group(1) if match else None


def event_commit(event: FluxEvent) -> str | None:
    """The commit the event is about: 40 hex, or 12 hex for a HelmRelease chart version.

    Follows Flux's own `Event.GetRevision()` order: `commit`, `originRevision`, `revision`.
    A HelmRelease `+<12hex>` is a Git short SHA only without `oci-digest`; with it,
    those 12 hex are the start of the OCI digest.
    """
    meta = event.metadata
    for key in ("commit", "originRevision", "revision"):
        sha = commit_from_revision(meta.get(key))
        if sha:
            return sha
    if event.involved_object.kind == "HelmRelease" and "oci-digest" not in meta:
        return chart_short_sha(meta.get("revision"))
    return None


_S, _F, _P, _I = Outcome.SUCCESS, Outcome.FAILURE, Outcome.PROGRESS, Outcome.IGNORE

_KUSTOMIZATION: Mapping[tuple[str, str], Outcome] = {
    # Ready=True at the end of a reconcile: applied (and healthy with wait/healthChecks).
    ("info", "ReconciliationSucceeded"): _S,
    # Change sets and "Health check passed" while the revision is being applied.
    ("info", "Progressing"): _P,
    # The revision waits for other objects; it will be applied later.
    ("info", "DependencyNotReady"): _P,
    # Judgement: a newer reconcile abandoned this health check; that one will report.
    ("info", "HealthCheckCanceled"): _I,
    ("error", "ReconciliationFailed"): _F,
    ("error", "BuildFailed"): _F,
    ("error", "HealthCheckFailed"): _F,
    ("error", "PruneFailed"): _F,
    ("error", "ArtifactFailed"): _F,
    ("error", "DirectoryCreationFailed"): _F,
    ("error", "InvalidCELExpression"): _F,
    ("error", "FeatureGateDisabled"): _F,
    ("error", "AccessDenied"): _F,
}

_HELMRELEASE: Mapping[tuple[str, str], Outcome] = {
    ("info", "InstallSucceeded"): _S,
    ("info", "UpgradeSucceeded"): _S,
    ("info", "TestSucceeded"): _S,
    # Judgement: rollback, uninstall and drift handling act on a release that is already
    # there (or being removed); they say nothing about the revision that authored commits.
    ("info", "RollbackSucceeded"): _I,
    ("info", "UninstallSucceeded"): _I,
    ("info", "DriftCorrected"): _I,
    ("error", "DriftDetected"): _I,
    ("error", "DriftCorrectionFailed"): _I,
    # Judgement: remediation failing after a failed install/upgrade, which was reported already.
    ("error", "RollbackFailed"): _I,
    ("error", "UninstallFailed"): _I,
    # A stuck release was unlocked; the next reconcile will report on the revision.
    ("info", "PendingRelease"): _I,
    ("info", "DependencyNotReady"): _P,
    ("info", "HealthCheckCanceled"): _I,
    ("error", "InstallFailed"): _F,
    ("error", "UpgradeFailed"): _F,
    ("error", "TestFailed"): _F,
    ("error", "ArtifactFailed"): _F,
    ("error", "ValuesError"): _F,
    ("error", "InvalidCELExpression"): _F,
    ("error", "AccessDenied"): _F,
    ("error", "PendingRelease"): _F,
    ("error", "InventoryBuildFailed"): _F,
    ("error", "NamespaceCheckSkipped"): _F,
}

_SOURCE: Mapping[tuple[str, str], Outcome] = {
    # Judgement: a source stored the revision (fetched, not applied); the Kustomization
    # or HelmRelease that applies it reports success or failure.
    ("info", "NewArtifact"): _P,
    ("info", "Succeeded"): _P,
    # Every source error (GitOperationFailed, AuthenticationFailed, ...) is a failure by default.
}

_SOURCE_KINDS = (
    "GitRepository",
    "OCIRepository",
    "Bucket",
    "HelmRepository",
    "HelmChart",
    "ExternalArtifact",
)

REASONS: Mapping[str, Mapping[tuple[str, str], Outcome]] = {
    "Kustomization": _KUSTOMIZATION,
    "HelmRelease": _HELMRELEASE,
    **dict.fromkeys(_SOURCE_KINDS, _SOURCE),
}
"""(severity, reason) -> outcome per kind. Flux kind names are unique across Flux API groups."""


def classify(event: FluxEvent) -> Outcome:
    """The outcome of an event: table lookup, then unknown info → ignore, unknown error → failure.

    Unknown errors count as failures so that a reason added by a future Flux release
    marks the run failed rather than leaving it waiting forever.
    """
    table = REASONS.get(event.involved_object.kind, {})
    found = table.get((event.severity, event.reason))
    if found is not None:
        return found
    return Outcome.FAILURE if event.severity == "error" else Outcome.IGNORE


def dedupe_key(event: FluxEvent, outcome: Outcome) -> str | None:
    """Same (object, commit or revision, outcome) → same key; None when there is nothing to act on.

    Flux repeats success events on every interval and sends one event per matching Alert;
    the key lets the journal store those once for action.
    """
    if outcome not in (Outcome.SUCCESS, Outcome.FAILURE):
        return None
    subject = event_commit(event) or event.revision
    if not subject:
        return None
    text = "\n".join((event.involved_object.key, subject, outcome.value))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
