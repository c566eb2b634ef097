"""The loop with Kubernetes as the source of deploys, against a real Airflow and real git.

The Flux objects live in kmock (an in-memory API server over real HTTP); the test plays
Flux's controllers by writing their status. Fluxback runs as `fluxback serve` with
`kubernetes.enabled` and a kubeconfig for that server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
from kmock import KubernetesError, resource
from kubernetes_asyncio.client import CustomObjectsApi
from prometheus_client.parser import text_string_to_metric_families

from receiver.kube.kinds import GIT_REPOSITORY, KUSTOMIZATION
from tests.gitops import GitOpsRepo
from tests.integration.airflow_harness import AirflowServer
from tests.integration.fluxback_service import FluxbackService, fluxback_config
from tests.integration.test_loop import WAIT_DAG, WAIT_TASK, airflow_ready, trailers, waiting_run
from tests.kube_cluster import (
    applied,
    controller_client,
    create,
    declare_flux_kinds,
    eventually,
    git_repository,
    kubeconfig_text,
    kustomization,
    lowercase_watch_flag,
    set_status,
)

pytestmark = pytest.mark.integration
EVENTS = "events.k8s.io/v1/events"
__all__ = ["airflow_ready"]  # the module-scoped fixture, shared with test_loop

StartFluxback = Callable[..., FluxbackService]


@pytest.fixture(scope="module", autouse=True)
def airflow_deferring(airflow_ready: AirflowServer) -> None:
    """Wait once for a first deferred task: a fresh Airflow's triggerer can take longer to start
    on a loaded machine than `waiting_run` gives one run."""
    run_id = f"warmup__{uuid.uuid4().hex[:12]}"
    airflow_ready.trigger(WAIT_DAG, run_id)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # its API server may be too slow to answer at first, too
            if airflow_ready.task_states(WAIT_DAG, run_id).get(WAIT_TASK) == "deferred":
                return
        time.sleep(1)
    raise AssertionError("no task of the waiting DAG was deferred within 300 s")


@pytest.fixture
def gitops(tmp_path: Path) -> GitOpsRepo:
    return GitOpsRepo(tmp_path / "git")


@pytest.fixture
async def flux(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CustomObjectsApi]:
    """Flux's controllers, writing objects and status into the emulated cluster."""
    lowercase_watch_flag(monkeypatch)
    declare_flux_kinds(kmock)
    async with controller_client(kmock) as api:
        yield api


@pytest.fixture
async def fluxback(
    tmp_path: Path, airflow_ready: AirflowServer, gitops: GitOpsRepo, kmock: kmock.KubernetesEmulator
) -> AsyncIterator[FluxbackService]:
    """Fluxback reading the emulated cluster (not started: tests start and stop it)."""
    root = tmp_path / "fluxback"
    config = fluxback_config(root, airflow=airflow_ready, repo=gitops)
    (root / "kubeconfig").write_text(kubeconfig_text(str(kmock.url)))
    config["kubernetes"] = {"enabled": True, "kubeconfig": str(root / "kubeconfig"), "resync_seconds": 2}
    service = FluxbackService(root, config)
    yield service
    await asyncio.to_thread(service.stop)


async def start(service: FluxbackService) -> None:
    await asyncio.to_thread(service.start)  # the emulated API server keeps answering meanwhile


async def applied_base(gitops: GitOpsRepo, flux: CustomObjectsApi, fluxback: FluxbackService) -> str:
    """A first commit that the apps Kustomization has applied when Fluxback starts; its sha."""
    base = gitops.commit({"apps/base.yaml": "a: 1\n"}, "base")
    await create(flux, KUSTOMIZATION, kustomization("apps", status=applied(GitOpsRepo.revision(base))))
    await start(fluxback)
    return base


async def apps_deliveries(service: FluxbackService) -> list[dict[str, Any]]:
    listed = await service.get("/deliveries", object="Kustomization/flux-system/apps")
    return [await service.get(f"/deliveries/{d['id']}") for d in listed["deliveries"]]


def mark_actions(deliveries: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [
        action
        for delivery in deliveries
        for action in delivery["actions"]
        if action["kind"] == "mark_task" and action["target"]["run_id"] == run_id
    ]


async def marked_once(airflow: AirflowServer, service: FluxbackService, run_id: str) -> list[dict[str, Any]]:
    """Waits for the task to be marked, lets a few re-lists pass, and checks it was marked once."""
    assert await airflow.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, ["success"]) == "success"

    async def settled() -> bool:
        return all(d["state"] == "done" for d in await apps_deliveries(service))

    await eventually(settled, seconds=30)
    await asyncio.sleep(3)  # more than one resync_seconds: a re-list must not act again
    deliveries = await apps_deliveries(service)
    (action,) = mark_actions(deliveries, run_id)
    assert action["state"] == "done"
    return deliveries


async def test_no_webhook_the_status_moves_and_the_task_is_marked_once(
    airflow_ready: AirflowServer,
    gitops: GitOpsRepo,
    flux: CustomObjectsApi,
    fluxback: FluxbackService,
    kmock: kmock.KubernetesEmulator,
) -> None:
    base = await applied_base(gitops, flux, fluxback)
    run_id = await waiting_run(airflow_ready)
    refused = gitops.commit(
        {"apps/x.yaml": "x: 1\n"}, "names a DAG the policy refuses", trailers("r", "other")
    )
    sha = gitops.commit({"apps/model.yaml": "image: model:2\n"}, "deploy model 2", trailers(run_id))

    await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(GitOpsRepo.revision(sha)))

    deliveries = await marked_once(airflow_ready, fluxback, run_id)
    assert {d["source"] for d in deliveries} == {"kubernetes"}
    assert [d["commit"] for d in deliveries] == [sha, base]
    # kubectl describe kustomization apps: what Fluxback did, and what it refused.
    await eventually(lambda: len(recorded_events(kmock)) == 2, seconds=15)
    events = {e["reason"]: e for e in recorded_events(kmock)}
    assert {e["regarding"]["name"] for e in events.values()} == {"apps"}
    marked = events["AirflowTaskMarked"]
    assert (
        f"{WAIT_TASK} of {WAIT_DAG} run {run_id}: marked success" in marked["note"]
        and f"delivery {deliveries[0]['id']}" in marked["note"]
    )
    assert (
        events["CorrelationRefused"]["type"] == "Warning"
        and refused[:12] in events["CorrelationRefused"]["note"]
    )


def recorded_events(cluster: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    return [dict(obj.raw) for (resource, _, _), obj in cluster.objects.items() if resource.plural == "events"]


@pytest.mark.parametrize("status", [500, 403])
async def test_an_events_api_that_fails_changes_nothing_else(
    airflow_ready: AirflowServer,
    gitops: GitOpsRepo,
    flux: CustomObjectsApi,
    fluxback: FluxbackService,
    kmock: kmock.KubernetesEmulator,
    status: int,
) -> None:
    kmock["post", resource(EVENTS)] << KubernetesError(status=status, reason="Refused")
    await applied_base(gitops, flux, fluxback)
    run_id = await waiting_run(airflow_ready)
    gitops.commit({"apps/x.yaml": "x: 1\n"}, "names a DAG the policy refuses", trailers("r", "other"))
    sha = gitops.commit({"apps/model.yaml": "image: model:7\n"}, "deploy model 7", trailers(run_id))

    await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(GitOpsRepo.revision(sha)))

    await marked_once(airflow_ready, fluxback, run_id)

    async def events(outcome: str) -> float:
        families = text_string_to_metric_families(await fluxback.metrics_text())
        found = [
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "fluxback_kube_events_total" and sample.labels["outcome"] == outcome
        ]
        return sum(found)

    async def both_failed() -> bool:
        return await events("failed") == 2  # the refusal and the marked task

    await eventually(both_failed, seconds=15)
    assert await events("recorded") == 0


async def test_the_webhook_arriving_too_still_marks_once(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, flux: CustomObjectsApi, fluxback: FluxbackService
) -> None:
    await applied_base(gitops, flux, fluxback)
    runs = [await waiting_run(airflow_ready) for _ in range(2)]
    first = gitops.commit({"apps/model.yaml": "image: model:3\n"}, "status first", trailers(runs[0]))
    await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(GitOpsRepo.revision(first)))
    await marked_once(airflow_ready, fluxback, runs[0])
    await fluxback.report(first)  # Flux's webhook for the same revision, after the status

    second = gitops.commit({"apps/model.yaml": "image: model:4\n"}, "webhook first", trailers(runs[1]))
    await fluxback.report(second)  # the webhook first, then the status
    await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(GitOpsRepo.revision(second)))

    deliveries = await marked_once(airflow_ready, fluxback, runs[1])
    assert len(mark_actions(deliveries, runs[0])) == 1
    by_commit = {(d["commit"], d["source"]): d for d in deliveries}
    assert by_commit[(first, "webhook")]["duplicate_of"] == by_commit[(first, "kubernetes")]["id"]
    assert by_commit[(second, "kubernetes")]["duplicate_of"] == by_commit[(second, "webhook")]["id"]


async def test_a_deploy_while_fluxback_was_stopped_is_acted_on_once_at_start_up(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, flux: CustomObjectsApi, fluxback: FluxbackService
) -> None:
    base = await applied_base(gitops, flux, fluxback)
    await eventually(lambda: _has_deliveries(fluxback), seconds=30)
    await asyncio.to_thread(fluxback.stop)

    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: model:5\n"}, "deploy while down", trailers(run_id))
    await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(GitOpsRepo.revision(sha)))
    assert airflow_ready.task_states(WAIT_DAG, run_id)[WAIT_TASK] == "deferred"
    await start(fluxback)

    deliveries = await marked_once(airflow_ready, fluxback, run_id)
    assert [(d["commit"], d["source"]) for d in deliveries] == [(sha, "kubernetes"), (base, "kubernetes")]


async def _has_deliveries(service: FluxbackService) -> bool:
    return bool(await apps_deliveries(service))


async def test_discovery_alone_is_enough_for_the_whole_loop(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, flux: CustomObjectsApi, fluxback: FluxbackService
) -> None:
    fluxback.config["git"]["objects"] = []
    fluxback.config["git"]["repositories"] = [{"name": "flux-system/flux-system"}]  # no URL: the cluster's
    base = gitops.commit({"apps/base.yaml": "a: 1\n"}, "base")
    await create(flux, GIT_REPOSITORY, git_repository("flux-system", gitops.url))
    await create(
        flux, KUSTOMIZATION, kustomization("apps", path="./apps", status=applied(GitOpsRepo.revision(base)))
    )
    await start(fluxback)
    run_id, elsewhere = await waiting_run(airflow_ready), await waiting_run(airflow_ready)
    gitops.commit({"infra/net.yaml": "v: 1\n"}, "outside the folder", trailers(elsewhere))
    sha = gitops.commit({"apps/model.yaml": "image: model:6\n"}, "deploy model 6", trailers(run_id))

    await set_status(flux, KUSTOMIZATION, "flux-system", "apps", applied(GitOpsRepo.revision(sha)))

    latest, first = await marked_once(airflow_ready, fluxback, run_id)
    assert (latest["commit"], first["commit"]) == (sha, base)
    assert [c["commit"] for c in latest["correlations"]] == [sha]  # the infra commit is outside ./apps
    assert airflow_ready.task_states(WAIT_DAG, elsewhere)[WAIT_TASK] == "deferred"
