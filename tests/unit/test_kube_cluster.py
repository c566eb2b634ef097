"""The Kubernetes side over real HTTP (kmock + kubernetes_asyncio): status changes become deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import kmock
import pytest

from receiver.config import Config, KubernetesConfig
from receiver.journal import DeliveryFilter
from receiver.journal.sqlite import SqliteJournal
from receiver.kube import Cluster
from receiver.kube.kinds import HELM_RELEASE, KUSTOMIZATION
from receiver.metrics import Metrics
from receiver.readiness import ReadinessChecks
from tests.flux_replay import event_body
from tests.helpers import running
from tests.kube_cluster import (
    applied,
    controller_client,
    create,
    declare_flux_kinds,
    eventually,
    failed,
    helm_release,
    kubeconfig_text,
    kustomization,
    lowercase_watch_flag,
    ready,
    set_status,
)

SHA = "3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345"
OLD = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _flux_api(monkeypatch: pytest.MonkeyPatch, kmock: kmock.KubernetesEmulator) -> None:
    lowercase_watch_flag(monkeypatch)
    declare_flux_kinds(kmock)


def kube_config(tmp_path: Path, url: str, **settings: object) -> KubernetesConfig:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(url))
    return KubernetesConfig(enabled=True, kubeconfig=path, **settings)


@asynccontextmanager
async def watching(cluster: Cluster) -> AsyncIterator[Cluster]:
    task = asyncio.create_task(cluster.run())
    try:
        yield cluster
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_status_change_becomes_one_delivery_marked_kubernetes(
    tmp_path: Path, kmock: kmock.KubernetesEmulator, journal: SqliteJournal
) -> None:
    metrics = Metrics()
    cluster = Cluster(kube_config(tmp_path, str(kmock.url)), journal, metrics)
    async with controller_client(kmock) as flux, watching(cluster):
        await create(flux, KUSTOMIZATION, kustomization("apps", status=applied(f"main@sha1:{OLD}")))
        await eventually(lambda: _count(journal, 1))
        await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(f"main@sha1:{SHA}"))
        await eventually(lambda: _count(journal, 2))
        latest = (await journal.list(DeliveryFilter()))[0]
        assert (latest.source, latest.outcome, latest.commit) == ("kubernetes", "success", SHA)
        assert latest.revision == f"main@sha1:{SHA}"
        delivery = await journal.get(latest.id)
        assert delivery is not None and delivery.authenticated_by == "kubernetes"
        await set_status(flux, KUSTOMIZATION, "flux-system", "apps", failed(f"main@sha1:{OLD}", SHA))
        await eventually(lambda: _count(journal, 3))
        assert (await journal.list(DeliveryFilter()))[0].outcome == "failure"
    assert counted(metrics, "fluxback_status_changes_total", kind="Kustomization", result="accepted") == 3


async def _count(journal: SqliteJournal, expected: int) -> bool:
    return len(await journal.list(DeliveryFilter())) == expected


async def _duplicates_counted(metrics: Metrics, expected: int) -> bool:
    return (
        counted(metrics, "fluxback_status_changes_total", kind="Kustomization", result="duplicate")
        == expected
    )


async def test_re_lists_and_restarts_do_not_append_the_same_status_again(
    tmp_path: Path, kmock: kmock.KubernetesEmulator, journal: SqliteJournal
) -> None:
    settings = kube_config(tmp_path, str(kmock.url), resync_seconds=0.2)
    async with controller_client(kmock) as flux:
        await create(flux, KUSTOMIZATION, kustomization("apps", status=applied(f"main@sha1:{SHA}")))
        metrics = Metrics()
        async with watching(Cluster(settings, journal, metrics)):
            await eventually(lambda: _count(journal, 1))
            await asyncio.sleep(1.0)  # several re-lists and re-watches (kmock ends no watch by itself)
        assert counted(metrics, "fluxback_status_changes_total", kind="Kustomization", result="accepted") == 1
        restarted = Metrics()
        async with watching(Cluster(settings, journal, restarted)):
            duplicates = {"kind": "Kustomization", "result": "duplicate"}
            await eventually(lambda: counted(restarted, "fluxback_status_changes_total", **duplicates) == 1)
    assert len(await journal.list(DeliveryFilter())) == 1


async def test_a_webhook_and_a_status_change_for_the_same_revision_act_once(
    tmp_path: Path, kmock: kmock.KubernetesEmulator, journal: SqliteJournal, config: Config
) -> None:
    metrics = Metrics()
    revision = f"main@sha1:{SHA}"
    async with running(config, journal) as service, controller_client(kmock) as flux:
        status, answer, _ = await service.post_event(event_body(name="apps", revision=revision))
        assert (status, answer["duplicate"]) == (202, False)
        async with watching(Cluster(kube_config(tmp_path, str(kmock.url)), journal, metrics)):
            await create(flux, KUSTOMIZATION, kustomization("apps", status=applied(revision)))
            await eventually(lambda: _count(journal, 2))
            await eventually(lambda: _duplicates_counted(metrics, 1))
        status_entry, webhook_entry = await journal.list(DeliveryFilter())
        assert (webhook_entry.source, status_entry.source) == ("webhook", "kubernetes")
        assert status_entry.duplicate_of == webhook_entry.id
        # The other order: the status first, then Flux's webhook for the same revision.
        async with watching(Cluster(kube_config(tmp_path, str(kmock.url)), journal, metrics)):
            await create(flux, KUSTOMIZATION, kustomization("infra", status=applied(revision)))
            await eventually(lambda: _count(journal, 3))
            # Appends commit together: wait for the re-listed apps to be counted too, not just stored.
            await eventually(lambda: _duplicates_counted(metrics, 2))
        status, answer, _ = await service.post_event(event_body(name="infra", revision=revision))
        assert (status, answer["duplicate"]) == (202, True)
        listed = (await service.get("/deliveries?object=Kustomization/flux-system/infra"))[1]["deliveries"]
        assert [d["source"] for d in listed] == ["webhook", "kubernetes"]
    # apps: a duplicate of the webhook; then apps again (same status, a fresh Cluster) is the same entry.
    assert counted(metrics, "fluxback_status_changes_total", kind="Kustomization", result="duplicate") == 2


async def test_helmrelease_status_and_deleted_objects(
    tmp_path: Path, kmock: kmock.KubernetesEmulator, journal: SqliteJournal
) -> None:
    history = [{"version": 1, "chartVersion": f"1.0.0+{SHA[:12]}", "status": "deployed"}]
    status = {"conditions": [ready("True", "InstallSucceeded")], "history": history}
    async with (
        controller_client(kmock) as flux,
        watching(Cluster(kube_config(tmp_path, str(kmock.url)), journal, Metrics())),
    ):
        await create(flux, HELM_RELEASE, helm_release("etl", status=status))
        await eventually(lambda: _count(journal, 1))
    entry = (await journal.list(DeliveryFilter()))[0]
    assert (entry.kind, entry.outcome, entry.commit, entry.reason) == (
        "HelmRelease",
        "success",
        SHA[:12],
        "InstallSucceeded",
    )


async def test_not_ready_when_the_api_cannot_be_listed_for_longer_than_resync(
    tmp_path: Path, journal: SqliteJournal, config: Config
) -> None:
    metrics = Metrics()
    cluster = Cluster(kube_config(tmp_path, "http://127.0.0.1:9", resync_seconds=0.3), journal, metrics)
    readiness = ReadinessChecks()
    readiness.add(cluster.problems)
    async with running(config, journal, readiness=readiness) as service, watching(cluster):
        assert (await service.get("/readyz"))[0] == 200
        await asyncio.sleep(0.6)
        status, answer = await service.get("/readyz")
        assert status == 503
        assert answer["detail"].startswith("kubernetes: cannot list GitRepository in all namespaces for")
    assert counted(metrics, "fluxback_watch_restarts_total", kind="Kustomization") >= 1
