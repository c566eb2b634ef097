"""The event model against Flux's payloads (tests/fixtures/flux/), revision formats, the
controllers' reasons as outcomes, and dedupe keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from receiver.events import (
    REASONS,
    EventInvalid,
    FluxEvent,
    Outcome,
    chart_short_sha,
    classify,
    commit_from_revision,
    dedupe_key,
    event_commit,
    parse_event,
)
from tests.flux_replay import EXAMPLES, event_body, go_json, payload

SHA = "3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345"
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

EXPECTED = {
    # name: (object key, outcome, commit)
    "a_kustomization_reconciliation_succeeded": ("Kustomization/flux-system/data-pipelines", "success", SHA),
    "b_kustomization_progressing": ("Kustomization/flux-system/data-pipelines", "progress", SHA),
    "c_kustomization_health_check_failed": ("Kustomization/flux-system/data-pipelines", "failure", SHA),
    "d_helmrelease_upgrade_succeeded": ("HelmRelease/data-pipelines/etl", "success", "3b9f1c2a7d4e"),
    "e_helmrelease_upgrade_failed": ("HelmRelease/data-pipelines/etl", "failure", "9c0d1e2f3a4b"),
    "f_gitrepository_new_artifact": ("GitRepository/flux-system/flux-system", "progress", SHA),
    "g_ocirepository_new_artifact": ("OCIRepository/flux-system/data-pipelines", "progress", None),
    "g_kustomization_from_oci": ("Kustomization/flux-system/data-pipelines-oci", "success", SHA),
}


def test_every_example_is_covered() -> None:
    assert set(EXPECTED) == set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_parse_and_classify(name: str) -> None:
    event = parse_event(payload(name))
    key, outcome, commit = EXPECTED[name]
    assert event.involved_object.key == key
    assert classify(event) == outcome
    assert event_commit(event) == commit


def test_example_a_fields() -> None:
    event = parse_event(payload("a_kustomization_reconciliation_succeeded"))
    assert event.timestamp == datetime(2026, 8, 10, 9, 15, 42, tzinfo=UTC)
    assert event.involved_object.api_group == "kustomize.toolkit.fluxcd.io"
    assert event.involved_object.uid == "5a1d1b2e-8f0c-4f0e-9a57-3c0b7f1c2d11"
    assert event.metadata == {"commit_status": "update", "revision": f"main@sha1:{SHA}"}
    assert event.revision == f"main@sha1:{SHA}"
    assert event.reporting_instance == "kustomize-controller-6d9c7b8f5-x2k4p"


@pytest.mark.parametrize(
    ("revision", "commit"),
    [
        (f"main@sha1:{SHA}", SHA),
        (f"feature/x/y@sha1:{SHA}", SHA),
        (f"v1.2.3@sha1:{SHA}", SHA),
        (f"sha1:{SHA}", SHA),
        (f"refs/pull/42/head@sha1:{SHA}", SHA),
        (f"user@host-branch@sha1:{SHA}", SHA),
        (f"main/{SHA}", SHA),
        (f"feature/x/{SHA}", SHA),
        (f"HEAD/{SHA}", SHA),
        (SHA, SHA),
        (f"latest@sha256:{DIGEST}", None),
        (f"sha256:{DIGEST}", None),
        (f"main@sha1:{SHA[:12]}", None),
        (f"main@sha1:{SHA.upper()}", None),
        ("1.4.2", None),
        ("1.4.2+3b9f1c2a7d4e", None),
        ("", None),
        (None, None),
    ],
)
def test_commit_from_revision(revision: str | None, commit: str | None) -> None:
    assert commit_from_revision(revision) == commit


@pytest.mark.parametrize(
    ("version", "short"),
    [
        ("1.4.2+3b9f1c2a7d4e", "3b9f1c2a7d4e"),
        ("1.4.2+3b9f1c2a7d4e.5", "3b9f1c2a7d4e"),
        ("1.4.2-rc.1+3b9f1c2a7d4e", "3b9f1c2a7d4e"),
        ("1.4.2", None),
        ("1.4.2+build.7", None),
        ("1.4.2+3b9f1c2a7d4", None),
    ],
)
def test_chart_short_sha(version: str, short: str | None) -> None:
    assert chart_short_sha(version) == short


def _helm(metadata: dict[str, str]) -> FluxEvent:
    return parse_event(
        event_body(kind="HelmRelease", reason="UpgradeSucceeded", revision=None, metadata=metadata)
    )


def test_helm_short_sha_only_without_oci_digest() -> None:
    assert event_commit(_helm({"revision": "1.4.2+3b9f1c2a7d4e.3"})) == "3b9f1c2a7d4e"
    assert event_commit(_helm({"revision": "1.4.2+3b9f1c2a7d4e", "oci-digest": f"sha256:{DIGEST}"})) is None
    assert event_commit(_helm({"revision": "1.4.2"})) is None


def test_short_sha_is_only_a_helmrelease_thing() -> None:
    event = parse_event(event_body(kind="Kustomization", revision="1.4.2+3b9f1c2a7d4e"))
    assert event_commit(event) is None


def test_commit_precedence_is_commit_then_origin_then_revision() -> None:
    other = "a" * 40
    third = "b" * 40
    both = {"originRevision": f"main@sha1:{other}"}
    assert event_commit(parse_event(event_body(metadata=both))) == other
    everything = {**both, "commit": third}
    assert event_commit(parse_event(event_body(metadata=everything))) == third
    digest_origin = {"originRevision": f"latest@sha256:{DIGEST}"}
    assert event_commit(parse_event(event_body(metadata=digest_origin))) == SHA


def _event(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(payload("a_kustomization_reconciliation_succeeded"))
    for path, value in changes.items():
        node = raw
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"involvedObject": _DELETE}, "involvedObject"),
        ({"involvedObject": "Kustomization/x"}, "involvedObject"),
        ({"involvedObject__kind": _DELETE}, "involvedObject.kind"),
        ({"involvedObject__kind": ""}, "involvedObject.kind"),
        ({"involvedObject__namespace": 7}, "involvedObject.namespace"),
        ({"involvedObject__name": None}, "involvedObject.name"),
        ({"involvedObject__apiVersion": ["v1"]}, "involvedObject.apiVersion"),
        ({"severity": "trace"}, "severity"),
        ({"severity": _DELETE}, "severity"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2026-08-10T09:15:42"}, "timestamp"),
        ({"timestamp": 1664520029}, "timestamp"),
        ({"reason": _DELETE}, "reason"),
        ({"message": {"text": "x"}}, "message"),
        ({"reportingController": _DELETE}, "reportingController"),
        ({"reportingInstance": 3}, "reportingInstance"),
        ({"metadata": ["revision"]}, "metadata"),
        ({"metadata__revision": 12}, "metadata.revision"),
    ],
)
def test_invalid_events_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(EventInvalid) as caught:
        parse_event(json.dumps(_event(**changes)).encode())
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b'{"severity": NaN}', b"[" * 100_000]
)
def test_bodies_that_are_not_json_objects(body: bytes) -> None:
    with pytest.raises(EventInvalid) as caught:
        parse_event(body)
    assert caught.value.field == "body"


def test_lenient_where_flux_is() -> None:
    raw = _event(metadata=_DELETE, reportingInstance=_DELETE, somethingNew={"x": 1}, involvedObject__extra=1)
    event = parse_event(go_json(raw))
    assert event.metadata == {}
    assert event.reporting_instance == ""
    assert event.revision is None
    assert parse_event(go_json(_event(metadata=None))).metadata == {}


def test_api_group_never_depends_on_the_version() -> None:
    for version in ("source.toolkit.fluxcd.io/v1beta2", "source.toolkit.fluxcd.io/v1"):
        event = parse_event(go_json(_event(involvedObject__apiVersion=version)))
        assert event.involved_object.api_group == "source.toolkit.fluxcd.io"
    assert parse_event(go_json(_event(involvedObject__apiVersion=_DELETE))).involved_object.api_group == ""


def _classify(kind: str, severity: str, reason: str) -> Outcome:
    return classify(parse_event(event_body(kind=kind, severity=severity, reason=reason)))


@pytest.mark.parametrize(
    ("kind", "severity", "reason", "outcome"),
    [
        ("Kustomization", "info", "ReconciliationSucceeded", "success"),
        ("Kustomization", "info", "Progressing", "progress"),
        ("Kustomization", "info", "DependencyNotReady", "progress"),
        ("Kustomization", "info", "HealthCheckCanceled", "ignore"),
        ("Kustomization", "error", "BuildFailed", "failure"),
        ("Kustomization", "error", "error", "failure"),
        ("Kustomization", "info", "info", "ignore"),
        ("Kustomization", "error", "ReconciliationSucceeded", "failure"),
        ("HelmRelease", "info", "InstallSucceeded", "success"),
        ("HelmRelease", "info", "TestSucceeded", "success"),
        ("HelmRelease", "info", "RollbackSucceeded", "ignore"),
        ("HelmRelease", "info", "UninstallSucceeded", "ignore"),
        ("HelmRelease", "info", "DriftCorrected", "ignore"),
        ("HelmRelease", "error", "DriftDetected", "ignore"),
        ("HelmRelease", "info", "PendingRelease", "ignore"),
        ("HelmRelease", "error", "PendingRelease", "failure"),
        ("HelmRelease", "error", "TestFailed", "failure"),
        ("GitRepository", "info", "NewArtifact", "progress"),
        ("GitRepository", "info", "Succeeded", "progress"),
        ("GitRepository", "error", "GitOperationFailed", "failure"),
        ("Bucket", "info", "NewArtifact", "progress"),
        ("ImagePolicy", "info", "Succeeded", "ignore"),
        ("ImagePolicy", "error", "ReconciliationFailed", "failure"),
        ("Kustomization", "info", "SomeFutureReason", "ignore"),
        ("Kustomization", "error", "SomeFutureFailure", "failure"),
    ],
)
def test_classification(kind: str, severity: str, reason: str, outcome: str) -> None:
    assert _classify(kind, severity, reason) == outcome


@pytest.mark.parametrize(
    "reason",
    [
        "ReconciliationFailed",
        "BuildFailed",
        "HealthCheckFailed",
        "PruneFailed",
        "ArtifactFailed",
        "DirectoryCreationFailed",
        "InvalidCELExpression",
        "FeatureGateDisabled",
        "AccessDenied",
    ],
)
def test_every_kustomization_failure_reason_of_facts_5_1(reason: str) -> None:
    assert REASONS["Kustomization"][("error", reason)] == Outcome.FAILURE


@pytest.mark.parametrize(
    "reason",
    [
        "InstallFailed",
        "UpgradeFailed",
        "TestFailed",
        "ArtifactFailed",
        "ValuesError",
        "InvalidCELExpression",
        "AccessDenied",
        "PendingRelease",
        "InventoryBuildFailed",
        "NamespaceCheckSkipped",
    ],
)
def test_every_helmrelease_failure_reason_of_facts_5_2(reason: str) -> None:
    assert REASONS["HelmRelease"][("error", reason)] == Outcome.FAILURE


def test_dedupe_key_is_per_object_commit_and_outcome() -> None:
    first = parse_event(event_body(message="Reconciliation finished in 1s, next run in 10m0s"))
    again = parse_event(event_body(message="Reconciliation finished in 2s, next run in 10m0s"))
    other_object = parse_event(event_body(name="infra"))
    key = dedupe_key(first, Outcome.SUCCESS)
    assert key is not None
    assert len(key) == 64
    assert key == dedupe_key(again, Outcome.SUCCESS)
    assert key != dedupe_key(first, Outcome.FAILURE)
    assert key != dedupe_key(other_object, Outcome.SUCCESS)


def test_dedupe_key_only_for_outcomes_with_a_revision() -> None:
    event = parse_event(event_body())
    assert dedupe_key(event, Outcome.PROGRESS) is None
    assert dedupe_key(event, Outcome.IGNORE) is None
    no_revision = parse_event(event_body(severity="error", reason="AccessDenied", revision=None))
    assert dedupe_key(no_revision, Outcome.FAILURE) is None


def test_dedupe_key_uses_the_raw_revision_without_a_commit() -> None:
    chart = _helm({"revision": "1.4.2"})
    newer = _helm({"revision": "1.4.3"})
    assert dedupe_key(chart, Outcome.SUCCESS) is not None
    assert dedupe_key(chart, Outcome.SUCCESS) != dedupe_key(newer, Outcome.SUCCESS)
