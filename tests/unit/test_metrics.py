"""Per-object DORA metrics (deploys, change failures, lead time), driven by real events through the
real app, worker, journal and git repository, and read back from `/metrics` as Prometheus would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import kmock
import pytest
from prometheus_client.parser import text_string_to_metric_families

from receiver.journal.sqlite import SqliteJournal
from receiver.kube import Cluster
from receiver.kube.kinds import GIT_REPOSITORY, KUSTOMIZATION
from receiver.metrics import Metrics
from receiver.service import worker_service
from tests.gitops import GitOpsRepo, git
from tests.helpers import Service, running
from tests.kube_cluster import (
    controller_client,
    create,
    declare_flux_kinds,
    eventually,
    git_repository,
    kustomization,
    lowercase_watch_flag,
)
from tests.unit.test_kube_cluster import kube_config, watching
from tests.unit.test_worker import post, until_state, worker_config

APPS = {"kind": "Kustomization", "namespace": "flux-system", "name": "apps"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(service: Service) -> Samples:
    async with service.session.get(f"{service.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def after_commit(repo: GitOpsRepo, sha: str, seconds: int) -> str:
    """An event timestamp `seconds` after the commit's date, in Flux's format."""
    committed = datetime.fromtimestamp(int(git("log", "-1", "--format=%ct", sha, cwd=repo.work)), UTC)
    return (committed + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_deploys_failures_and_lead_time_per_flux_object(tmp_path: Path, journal: SqliteJournal) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    first = repo.commit({"apps/a.yaml": "a: 1\n"}, "first")
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[worker_service(config, journal, metrics)]
    ) as service:
        before = await scrape(service)
        # Objects from git.objects start at zero, so increase() also counts their first deploy.
        assert value(before, "fluxback_deploys_total", **APPS, outcome="success") == 0
        assert value(before, "fluxback_deploys_total", **APPS, outcome="failure") == 0

        await until_state(
            service, await post(service, first, timestamp=after_commit(repo, first, 300)), "done"
        )
        repo.commit({"apps/a.yaml": "a: 2\n"}, "second")
        third = repo.commit({"apps/a.yaml": "a: 3\n"}, "third")
        failed = await post(service, third, severity="error", reason="HealthCheckFailed", message="timeout")
        await until_state(service, failed, "done")
        live = await post(service, third, timestamp=after_commit(repo, third, 1000))
        await until_state(service, live, "done")
        heartbeat = await post(service, third, message="Reconciliation finished in 2s, next run in 10m0s")
        await until_state(service, heartbeat, "done")
        await until_state(service, await post(service, third, reason="Progressing"), "done")
        await until_state(service, await post(service, first, name="unmapped"), "done")
        after = await scrape(service)

    assert value(after, "fluxback_deploys_total", **APPS, outcome="success") == 2
    assert value(after, "fluxback_deploys_total", **APPS, outcome="failure") == 1
    # first: 300 s; second and third went live together 1000 s after the third was committed.
    lead = "fluxback_commit_to_live_seconds"
    assert value(after, f"{lead}_count", **APPS) == 3
    assert value(after, f"{lead}_bucket", **APPS, le="120.0") == 0
    assert value(after, f"{lead}_bucket", **APPS, le="300.0") == 1
    assert value(after, f"{lead}_bucket", **APPS, le="600.0") == 1
    assert value(after, f"{lead}_bucket", **APPS, le="1800.0") == 3
    total = value(after, f"{lead}_sum", **APPS)
    assert total is not None and 2300 <= total < 2330
    # An object without a repository has no revisions to correlate, so it gets no series at all.
    assert not [key for key in after if ("name", "unmapped") in key[1]]


async def test_build_info_counts_one_replica(service: Service) -> None:
    samples = await scrape(service)
    [(labels, one)] = [(dict(k[1]), v) for k, v in samples.items() if k[0] == "fluxback_build_info"]
    assert one == 1 and labels["version"]


async def test_flux_objects_the_cluster_traces_to_a_repository_count_deploys_from_zero(
    tmp_path: Path, kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, journal: SqliteJournal
) -> None:
    lowercase_watch_flag(monkeypatch)
    declare_flux_kinds(kmock)
    metrics = Metrics()
    cluster = Cluster(kube_config(tmp_path, str(kmock.url)), journal, metrics)
    async with controller_client(kmock) as flux, watching(cluster):
        await create(flux, GIT_REPOSITORY, git_repository("flux-system", "https://git.example.com/fleet.git"))
        await eventually(
            lambda: cluster.discovery.locate("GitRepository", "flux-system", "flux-system") is not None
        )
        await create(flux, KUSTOMIZATION, kustomization("apps"))
        await create(flux, KUSTOMIZATION, kustomization("orphan", source="gone"))
        await eventually(
            lambda: cluster.discovery.locate("Kustomization", "flux-system", "orphan") is not None
        )

    def deploys(name: str, outcome: str) -> float | None:
        labels = {"kind": "Kustomization", "namespace": "flux-system", "name": name, "outcome": outcome}
        return metrics.registry.get_sample_value("fluxback_deploys_total", labels)

    assert deploys("apps", "success") == 0 and deploys("apps", "failure") == 0
    # No repository, so no revision of it is ever correlated: no series, not a misleading zero.
    assert deploys("orphan", "success") is None
