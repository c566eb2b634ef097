"""The whole loop against a real Airflow and real git: a commit with trailers is pushed, Flux's
event for the revision is replayed byte-exactly to a running Fluxback, and the effects are
checked through Airflow's own API."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitops import GitOpsRepo
from tests.integration.airflow_harness import AirflowServer
from tests.integration.fluxback_service import FluxbackService, fluxback_config

pytestmark = pytest.mark.integration

WAIT_DAG = "fluxback_wait"
WAIT_TASK = "wait_for_deploy"
MAPPED_DAG = "fluxback_wait_mapped"
CONSUMER_DAG = "fluxback_asset_consumer"
APPS_ASSET = "flux://test/Kustomization/flux-system/apps"

StartFluxback = Callable[..., FluxbackService]


@pytest.fixture(scope="module")
def airflow_ready(airflow: AirflowServer) -> AirflowServer:
    airflow.wait_for_dags(WAIT_DAG, MAPPED_DAG, "post_deploy", CONSUMER_DAG, timeout=90)
    return airflow


@pytest.fixture
def gitops(tmp_path: Path) -> GitOpsRepo:
    return GitOpsRepo(tmp_path / "git")


@pytest.fixture
def start_fluxback(
    tmp_path: Path, airflow_ready: AirflowServer, gitops: GitOpsRepo
) -> Iterator[StartFluxback]:
    started: list[FluxbackService] = []

    def start(**overrides: Any) -> FluxbackService:
        root = tmp_path / "fluxback"
        service = FluxbackService(
            root, fluxback_config(root, airflow=airflow_ready, repo=gitops, **overrides)
        )
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


async def waiting_run(airflow: AirflowServer) -> str:
    """A fresh run of the waiting DAG, parked in `deferred` like a real deploy waiting for Flux."""
    run_id = f"test__{uuid.uuid4().hex[:12]}"
    airflow.trigger(WAIT_DAG, run_id)
    await airflow.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, ["deferred"], within=90)
    return run_id


def trailers(run_id: str, dag_id: str = WAIT_DAG, task_id: str = WAIT_TASK) -> dict[str, str]:
    return {"Airflow-Dag-Id": dag_id, "Airflow-Run-Id": run_id, "Airflow-Task-Id": task_id}


def task_instance(airflow: AirflowServer, run_id: str, task_id: str = WAIT_TASK) -> dict[str, Any]:
    ti: dict[str, Any] = airflow.api("GET", f"/dags/{WAIT_DAG}/dagRuns/{run_id}/taskInstances/{task_id}")
    return ti


def action_states(delivery: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["kind"], a["state"]) for a in delivery["actions"]]


async def test_success_marks_the_waiting_task_and_the_run_goes_on(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: model:2\n"}, "deploy model 2", trailers(run_id))
    fluxback = start_fluxback()

    delivery = await fluxback.wait_delivery(await fluxback.report(sha))

    assert delivery["state"] == "done"
    assert action_states(delivery) == [("mark_task", "done")]
    assert delivery["why"] == {
        "cause": "acted",
        "text": f"task {WAIT_TASK} of {WAIT_DAG} run {run_id}: marked success",
    }
    assert await airflow_ready.wait_for_run_state(WAIT_DAG, run_id) == "success"
    states = airflow_ready.task_states(WAIT_DAG, run_id)
    assert (states[WAIT_TASK], states["after_deploy"], states["rollback"]) == (
        "success",
        "success",
        "skipped",
    )
    note = task_instance(airflow_ready, run_id)["note"]
    assert "Kustomization/flux-system/apps" in note and sha[:12] in note and GitOpsRepo.revision(sha) in note


async def test_failure_marks_the_task_failed_and_the_rollback_runs(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: model:broken\n"}, "deploy broken model", trailers(run_id))
    fluxback = start_fluxback()

    delivery_id = await fluxback.report(
        sha,
        reason="HealthCheckFailed",
        severity="error",
        message="health check failed after 30s: timeout waiting for: [Deployment/apps/model]",
    )

    assert action_states(await fluxback.wait_delivery(delivery_id)) == [("mark_task", "done")]
    assert await airflow_ready.wait_for_run_state(WAIT_DAG, run_id) == "failed"
    states = airflow_ready.task_states(WAIT_DAG, run_id)
    assert (states[WAIT_TASK], states["rollback"], states["after_deploy"]) == (
        "failed",
        "success",
        "upstream_failed",
    )


async def test_commits_pushed_between_two_fetches_are_all_correlated_but_not_outside_the_path(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    base = gitops.commit({"apps/base.yaml": "a: 1\n"}, "base")
    fluxback = start_fluxback()
    first = await fluxback.wait_delivery(await fluxback.report(base))
    assert any("first event for this object" in d["text"] for d in first["decisions"])

    runs = [await waiting_run(airflow_ready) for _ in range(4)]
    shas = [
        gitops.commit({"apps/one.yaml": "v: 1\n"}, "one", trailers(runs[0])),
        gitops.commit({"infra/net.yaml": "v: 1\n"}, "infra change", trailers(runs[3])),
        gitops.commit({"apps/two.yaml": "v: 2\n"}, "two", trailers(runs[1])),
        gitops.commit({"apps/three.yaml": "v: 3\n"}, "three", trailers(runs[2])),
    ]
    delivery = await fluxback.wait_delivery(await fluxback.report(shas[-1]))

    assert [c["commit"] for c in delivery["correlations"]] == [shas[0], shas[2], shas[3]]
    assert [c["run_id"] for c in delivery["correlations"]] == runs[:3]
    for run_id in runs[:3]:
        assert await airflow_ready.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, ["success"]) == "success"
    assert airflow_ready.task_states(WAIT_DAG, runs[3])[WAIT_TASK] == "deferred"


async def test_the_same_event_again_and_later_heartbeats_do_nothing_new(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: model:3\n"}, "deploy model 3", trailers(run_id))
    fluxback = start_fluxback(
        rules=[{"match": {"name": "apps", "outcome": "success"}, "trigger": [{"dag_id": "post_deploy"}]}]
    )
    message, timestamp = "Reconciliation finished in 2.1s, next run in 10m0s", "2026-11-25T10:00:00Z"
    first_id = await fluxback.report(sha, message=message, timestamp=timestamp)
    first = await fluxback.wait_delivery(first_id)
    assert action_states(first) == [("mark_task", "done"), ("trigger_dag", "done")]

    # Flux retrying, or a second Alert: the same bytes.
    retried = await fluxback.report(sha, message=message, timestamp=timestamp)
    heartbeat = await fluxback.report(sha, message="Reconciliation finished in 1.7s, next run in 10m0s")
    assert retried == first_id
    duplicate = await fluxback.wait_delivery(heartbeat)
    assert duplicate["duplicate_of"] == first_id and duplicate["actions"] == []

    post_runs = [r for r in airflow_ready.dag_runs("post_deploy") if r["conf"].get("commit") == sha]
    assert len(post_runs) == 1
    assert (await fluxback.get(f"/deliveries/{first_id}"))["actions"] == first["actions"]


async def test_a_failure_then_a_newer_success_does_not_flip_the_failed_task(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    failed_run, later_run = await waiting_run(airflow_ready), await waiting_run(airflow_ready)
    fluxback = start_fluxback()
    await fluxback.wait_delivery(
        await fluxback.report(gitops.commit({"apps/model.yaml": "image: v1\n"}, "v1"))
    )
    bad = gitops.commit({"apps/model.yaml": "image: bad\n"}, "bad", trailers(failed_run))
    await fluxback.wait_delivery(await fluxback.report(bad, reason="HealthCheckFailed", severity="error"))
    assert await airflow_ready.wait_for_ti_state(WAIT_DAG, failed_run, WAIT_TASK, ["failed"]) == "failed"

    good = gitops.commit({"apps/model.yaml": "image: good\n"}, "fix", trailers(later_run))
    delivery = await fluxback.wait_delivery(await fluxback.report(good))

    assert [c["commit"] for c in delivery["correlations"]] == [bad, good]
    assert delivery["actions"][0]["target"]["run_id"] == later_run
    assert any(
        "already done by delivery" in d["text"] and "marked failed" in d["text"]
        for d in delivery["decisions"]
    )
    assert await airflow_ready.wait_for_ti_state(WAIT_DAG, later_run, WAIT_TASK, ["success"]) == "success"
    assert airflow_ready.task_states(WAIT_DAG, failed_run)[WAIT_TASK] == "failed"


async def test_rules_create_asset_events_and_trigger_dag_runs(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: model:4\n"}, "deploy model 4", trailers(run_id))
    fluxback = start_fluxback(
        rules=[
            {
                "match": {"kind": "Kustomization", "name": "apps", "outcome": "success"},
                "object_asset": True,
                "trigger": [{"dag_id": "post_deploy"}],
            }
        ]
    )
    consumer_runs_before = {r["dag_run_id"] for r in airflow_ready.dag_runs(CONSUMER_DAG)}

    delivery = await fluxback.wait_delivery(await fluxback.report(sha))

    assert sorted(action_states(delivery)) == [
        ("asset_event", "done"),
        ("mark_task", "done"),
        ("trigger_dag", "done"),
    ]
    trigger = next(a for a in delivery["actions"] if a["kind"] == "trigger_dag")
    post_run = airflow_ready.dag_run("post_deploy", trigger["target"]["dag_run_id"])
    assert post_run["conf"]["commit"] == sha
    assert post_run["conf"]["revision"] == GitOpsRepo.revision(sha)
    assert post_run["conf"]["authoring_runs"] == [
        {"dag_id": WAIT_DAG, "run_id": run_id, "instance": "default", "commit": sha}
    ]

    def consumer_saw_the_event() -> tuple[bool, list[dict[str, Any]]]:
        # Only finished runs: Airflow 3.3.2 answers 500 for the upstream events of a run not started yet.
        runs = [
            r
            for r in airflow_ready.dag_runs(CONSUMER_DAG)
            if r["dag_run_id"] not in consumer_runs_before and r["state"] in ("success", "failed")
        ]
        events: list[dict[str, Any]] = []
        for run in runs:
            path = f"/dags/{CONSUMER_DAG}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents"
            events += airflow_ready.api("GET", path)["asset_events"]
        return any(e["extra"].get("commit") == sha for e in events), events

    events = await airflow_ready.wait_until(consumer_saw_the_event, 60, "the asset consumer run")
    extra = next(e["extra"] for e in events if e["extra"].get("commit") == sha)
    assert extra["delivery_id"] == delivery["id"]
    assert extra["authoring_runs"][0]["run_id"] == run_id


async def test_actions_wait_for_airflow_to_come_back_and_happen_once(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: model:5\n"}, "deploy model 5", trailers(run_id))
    fluxback = start_fluxback(
        rules=[{"match": {"name": "apps", "outcome": "success"}, "trigger": [{"dag_id": "post_deploy"}]}],
        worker={"max_attempts": 100, "retry_max_seconds": 2},
    )
    airflow_ready.stop_api_server()
    try:
        delivery_id = await fluxback.report(sha)
        waiting = await fluxback.wait_delivery(delivery_id, states=["failed"])
        assert "temporary problem" in waiting["decisions"][-1]["text"]
    finally:
        airflow_ready.start_api_server()

    delivery = await fluxback.wait_delivery(delivery_id, within=90)

    assert delivery["state"] == "done" and delivery["attempts"] >= 2
    assert action_states(delivery) == [("mark_task", "done"), ("trigger_dag", "done")]
    assert await airflow_ready.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, ["success"]) == "success"
    post_runs = [r for r in airflow_ready.dag_runs("post_deploy") if r["conf"].get("commit") == sha]
    assert len(post_runs) == 1


async def test_a_dag_the_policy_does_not_allow_is_refused_visibly(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    run_id = await waiting_run(airflow_ready)
    sha = gitops.commit({"apps/model.yaml": "image: sneaky\n"}, "sneaky", trailers(run_id))
    fluxback = start_fluxback(policy=[{"match": {"name": "apps"}, "dags": ["deploy_*"]}])

    delivery = await fluxback.wait_delivery(await fluxback.report(sha))

    assert delivery["actions"] == []
    [correlation] = delivery["correlations"]
    assert "not allowed for Kustomization/flux-system/apps by the policy" in correlation["verdict"]
    listed = await fluxback.get("/deliveries", revision=sha)
    assert [d["id"] for d in listed["deliveries"]] == [delivery["id"]]
    assert listed["deliveries"][0]["why"] == {"cause": "refused", "text": correlation["verdict"]}
    assert airflow_ready.task_states(WAIT_DAG, run_id)[WAIT_TASK] == "deferred"


async def test_an_unknown_run_is_a_permanent_error_not_retried(
    gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    sha = gitops.commit({"apps/model.yaml": "image: orphan\n"}, "orphan", trailers("no_such_run"))
    fluxback = start_fluxback()

    delivery = await fluxback.wait_delivery(await fluxback.report(sha))

    assert delivery["state"] == "done" and delivery["attempts"] == 1
    [action] = delivery["actions"]
    assert action["state"] == "permanent_error"
    assert "404" in action["result"] and "no_such_run" in action["result"]
    [listed] = (await fluxback.get("/deliveries", revision=sha))["deliveries"]
    assert listed["why"]["cause"] == "action_failed"
    assert listed["why"]["text"].startswith(f"Airflow 404: dag run not found: dag {WAIT_DAG} run no_such_run")


async def test_a_mapped_wait_is_marked_at_every_index_or_at_the_one_named(
    airflow_ready: AirflowServer, gitops: GitOpsRepo, start_fluxback: StartFluxback
) -> None:
    every, one = f"test__{uuid.uuid4().hex[:12]}", f"test__{uuid.uuid4().hex[:12]}"
    for run_id in (every, one):
        airflow_ready.trigger(MAPPED_DAG, run_id)
        for index in (0, 1):
            await airflow_ready.wait_for_ti_state(
                MAPPED_DAG, run_id, f"{WAIT_TASK}[{index}]", ["deferred"], within=90
            )
    fluxback = start_fluxback()
    await fluxback.wait_delivery(await fluxback.report(gitops.commit({"apps/base.yaml": "v: 0\n"}, "base")))
    gitops.commit({"apps/all.yaml": "v: 1\n"}, "both clusters", trailers(every, dag_id=MAPPED_DAG))
    tip = gitops.commit(
        {"apps/one.yaml": "v: 1\n"},
        "one cluster",
        trailers(one, dag_id=MAPPED_DAG) | {"Airflow-Map-Index": "1"},
    )

    delivery = await fluxback.wait_delivery(await fluxback.report(tip))

    assert action_states(delivery) == [("mark_task", "done"), ("mark_task", "done")]
    assert await airflow_ready.wait_for_run_state(MAPPED_DAG, every) == "success"
    assert airflow_ready.task_states(MAPPED_DAG, every)["after_deploy"] == "success"
    states = airflow_ready.task_states(MAPPED_DAG, one)
    assert (states[f"{WAIT_TASK}[0]"], states[f"{WAIT_TASK}[1]"]) == ("deferred", "success")
