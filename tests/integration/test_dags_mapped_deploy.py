"""A commit task and `WaitForDeploySensor` mapped together, in a real Airflow with a running Fluxback;
and what the sensor does when nothing was committed: after a clear of a finished run, and by choice.

The test plays Flux: it posts the signed event for each revision the DAG pushed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.dags import read_airflow_trailers
from receiver.trailers import AirflowClaim
from tests.gitops import GitOpsRepo, git
from tests.integration.airflow_harness import AirflowServer
from tests.integration.fluxback_service import FluxbackService, fluxback_config
from tests.integration.test_dags_deploy_model import message

pytestmark = pytest.mark.integration

DAG_ID = "fluxback_mapped_deploy"  # tests/integration/dags/fluxback_mapped_deploy.py
COMMIT = "deploy.commit"
WAIT = "deploy.wait_for_deploy"
MANIFESTS = ["apps/alpha.yaml", "apps/beta.yaml"]  # index 0 and 1 of the mapped task group
UNCHANGED = "That means git has it, not that Flux applied it"


@pytest.fixture(scope="module")
def mapped(airflow: AirflowServer) -> AirflowServer:
    airflow.wait_for_dags(DAG_ID, timeout=120)
    return airflow


@pytest.fixture
def gitops(tmp_path: Path) -> GitOpsRepo:
    repo = GitOpsRepo(tmp_path / "git")
    repo.commit(dict.fromkeys(MANIFESTS, "spec:\n  tag: v1\n"), "two apps at v1")
    return repo


@pytest.fixture
def git_conn_id(mapped: AirflowServer, gitops: GitOpsRepo) -> Iterator[str]:
    with mapped.connection("gitops", host=gitops.url) as conn_id:
        yield conn_id


@pytest.fixture
def fluxback(tmp_path: Path, mapped: AirflowServer, gitops: GitOpsRepo) -> Iterator[FluxbackService]:
    """Fluxback with the Kustomization `apps` applying ./apps and DAGs `fluxback_*` allowed."""
    root = tmp_path / "fluxback"
    service = FluxbackService(root, fluxback_config(root, airflow=mapped, repo=gitops))
    service.start()
    yield service
    service.stop()


def start(airflow: AirflowServer, git_conn_id: str, tag: str, when_unchanged: str = "succeed") -> str:
    run_id = f"mapped__{uuid.uuid4().hex[:12]}"
    airflow.trigger(
        DAG_ID, run_id, {"git_conn_id": git_conn_id, "tag": tag, "when_unchanged": when_unchanged}
    )
    return run_id


def pushes(airflow: AirflowServer, run_id: str) -> list[dict[str, Any]]:
    """The push result (XCom) of each index of the commit task, in index order."""
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{COMMIT}/xcomEntries/return_value"
    return [
        airflow.api("GET", path, params={"map_index": index, "deserialize": "true"})["value"]
        for index in range(len(MANIFESTS))
    ]


def mapped_states(airflow: AirflowServer, run_id: str) -> dict[str, str | None]:
    return {task: state for task, state in airflow.task_states(DAG_ID, run_id).items() if "[" in task}


def mapped_log(airflow: AirflowServer, run_id: str, task_id: str, index: int) -> str:
    """The log of the latest try of one index of a mapped task, as text."""
    ti = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{index}")
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{max(ti['try_number'], 1)}"
    return json.dumps(airflow.api("GET", path, params={"map_index": index, "full_content": "true"}))


async def deploy(airflow: AirflowServer, fluxback: FluxbackService, git_conn_id: str, tag: str) -> str:
    """A run that pushes both manifests at `tag`; Flux reports each revision; returns the run id."""
    run_id = start(airflow, git_conn_id, tag)
    for index in range(len(MANIFESTS)):
        settled = ["deferred", "success", "failed", "upstream_failed"]
        state = await airflow.wait_for_ti_state(DAG_ID, run_id, f"{WAIT}[{index}]", settled, within=60)
        assert state == "deferred", (mapped_states(airflow, run_id), mapped_log(airflow, run_id, WAIT, index))
    for push in pushes(airflow, run_id):
        delivery = await fluxback.wait_delivery(await fluxback.report(push["commit"], name="apps"))
        assert [(a["kind"], a["state"]) for a in delivery["actions"]] == [("mark_task", "done")], delivery
    assert await airflow.wait_for_run_state(DAG_ID, run_id, within=30) == "success", mapped_states(
        airflow, run_id
    )
    return run_id


async def test_each_index_of_a_mapped_sensor_waits_for_its_own_commit(
    mapped: AirflowServer, gitops: GitOpsRepo, git_conn_id: str, fluxback: FluxbackService
) -> None:
    run_id = await deploy(mapped, fluxback, git_conn_id, "v2")

    assert mapped_states(mapped, run_id) == {
        f"{COMMIT}[0]": "success",
        f"{COMMIT}[1]": "success",
        f"{WAIT}[0]": "success",
        f"{WAIT}[1]": "success",
    }
    for index, push in enumerate(pushes(mapped, run_id)):
        sha = push["commit"]
        assert push["committed"] is True
        assert git("show", "--name-only", "--format=", sha, cwd=gitops.remote) == MANIFESTS[index]
        assert read_airflow_trailers(message(gitops, sha)) == AirflowClaim(
            DAG_ID, run_id, (WAIT,), map_index=index
        )


async def test_a_cleared_finished_run_does_not_wait_again_for_its_old_deploy(
    mapped: AirflowServer, gitops: GitOpsRepo, git_conn_id: str, fluxback: FluxbackService
) -> None:
    """Its commits are in git and were reported long ago; waiting again would end in a rollback."""
    run_id = await deploy(mapped, fluxback, git_conn_id, "v3")
    tip = git("rev-parse", "main", cwd=gitops.remote)

    mapped.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True},
    )

    assert await mapped.wait_for_run_state(DAG_ID, run_id, within=60) == "success"  # queued by the clear
    assert set(mapped_states(mapped, run_id).values()) == {"success"}
    assert [(p["committed"], p["commit"]) for p in pushes(mapped, run_id)] == [(False, tip)] * 2
    assert git("rev-parse", "main", cwd=gitops.remote) == tip
    assert all(UNCHANGED in mapped_log(mapped, run_id, WAIT, index) for index in range(len(MANIFESTS)))


@pytest.mark.parametrize(("when_unchanged", "state"), [("skip", "skipped"), ("fail", "failed")])
async def test_a_sensor_can_refuse_to_go_on_without_a_deploy_of_its_own(
    mapped: AirflowServer, gitops: GitOpsRepo, git_conn_id: str, when_unchanged: str, state: str
) -> None:
    run_id = start(mapped, git_conn_id, "v1", when_unchanged)  # v1 is what git already has

    await mapped.wait_for_run_state(DAG_ID, run_id, within=60)

    assert mapped_states(mapped, run_id) == {
        f"{COMMIT}[0]": "success",
        f"{COMMIT}[1]": "success",
        f"{WAIT}[0]": state,
        f"{WAIT}[1]": state,
    }
    assert all(push["committed"] is False for push in pushes(mapped, run_id))
    assert f"when_unchanged={when_unchanged!r}" in mapped_log(mapped, run_id, WAIT, 0)
