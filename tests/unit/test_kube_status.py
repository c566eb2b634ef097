"""Flux status -> the event it stands for: the same outcome and dedupe key as Flux's own webhook."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from receiver.events import Outcome, classify, dedupe_key, event_commit, parse_event
from receiver.kube.kinds import GIT_REPOSITORY, HELM_RELEASE, KUSTOMIZATION
from receiver.kube.status import event_body, status_report
from tests.flux_replay import event_body as webhook_body
from tests.kube_cluster import applied, failed, helm_release, kustomization, ready

SHA = "3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345"
OLD = "0123456789abcdef0123456789abcdef01234567"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def test_ready_kustomization_is_a_success_with_the_webhooks_dedupe_key() -> None:
    report = status_report(KUSTOMIZATION, kustomization("apps", status=applied(f"main@sha1:{SHA}")))
    assert report is not None
    event = parse_event(event_body(report.event(NOW)))
    assert classify(event) is Outcome.SUCCESS
    assert event_commit(event) == SHA
    webhook = parse_event(webhook_body(revision=f"main@sha1:{SHA}"))
    assert dedupe_key(event, Outcome.SUCCESS) == dedupe_key(webhook, classify(webhook))


def test_failed_kustomization_reports_the_attempted_revision() -> None:
    obj = kustomization("apps", status=failed(f"main@sha1:{SHA}", f"main@sha1:{OLD}"))
    report = status_report(KUSTOMIZATION, obj)
    assert report is not None
    event = report.event(NOW)
    assert (event.severity, event.reason, event.revision) == (
        "error",
        "HealthCheckFailed",
        f"main@sha1:{SHA}",
    )
    assert classify(event) is Outcome.FAILURE


def test_waiting_and_progressing_statuses_are_not_reported() -> None:
    progressing = {"conditions": [ready("Unknown", "Progressing")], "lastAppliedRevision": f"main@sha1:{SHA}"}
    waiting = failed(f"main@sha1:{SHA}", f"main@sha1:{OLD}", reason="DependencyNotReady")
    never_applied = {"conditions": [ready("True", "ReconciliationSucceeded")]}
    for status in (progressing, waiting, never_applied, {}):
        assert status_report(KUSTOMIZATION, kustomization("apps", status=status)) is None
    assert status_report(GIT_REPOSITORY, kustomization("apps", status=applied(f"main@sha1:{SHA}"))) is None


def test_identity_is_stable_and_changes_with_the_status() -> None:
    def identity(status: dict[str, Any]) -> str:
        report = status_report(KUSTOMIZATION, kustomization("apps", status=status))
        assert report is not None
        return report.identity

    first = identity(applied(f"main@sha1:{SHA}"))
    assert identity(applied(f"main@sha1:{SHA}")) == first
    assert identity(applied(f"main@sha1:{OLD}")) != first
    assert identity(applied(f"main@sha1:{SHA}", since="2026-11-25T10:00:00Z")) != first


def test_helmrelease_success_comes_from_its_newest_deployed_history_entry() -> None:
    history = [
        {"version": 3, "chartVersion": f"1.4.2+{SHA[:12]}", "appVersion": "2.9.1", "status": "deployed"},
        {"version": 2, "chartVersion": f"1.4.1+{OLD[:12]}", "status": "superseded"},
    ]
    status = {
        "conditions": [ready("True", "UpgradeSucceeded")],
        "history": history,
        "lastAttemptedRevision": f"1.4.2+{SHA[:12]}",
    }
    report = status_report(HELM_RELEASE, helm_release("etl", status=status))
    assert report is not None
    event = report.event(NOW)
    assert classify(event) is Outcome.SUCCESS
    assert event.metadata == {"revision": f"1.4.2+{SHA[:12]}", "app-version": "2.9.1"}
    assert event_commit(event) == SHA[:12]


def test_helmrelease_failure_and_oci_charts() -> None:
    status = {
        "conditions": [ready("False", "UpgradeFailed")],
        "lastAttemptedRevision": f"1.5.0+{SHA[:12]}",
        "lastAttemptedRevisionDigest": "sha256:" + "a" * 64,
    }
    report = status_report(HELM_RELEASE, helm_release("etl", status=status))
    assert report is not None
    event = report.event(NOW)
    assert classify(event) is Outcome.FAILURE
    assert event_commit(event) is None  # `+<12 hex>` of an OCI chart is a digest, not a commit
    rolled_back = {"conditions": [ready("True", "RollbackSucceeded")], "lastAttemptedRevision": "1.5.0"}
    assert status_report(HELM_RELEASE, helm_release("etl", status=rolled_back)) is None
