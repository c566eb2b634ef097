"""The example `deploy_model` DAG in a real Airflow, against a real bare git remote and a running Fluxback.

The test plays Flux: it posts the Flux-exact signed event for the revision the DAG pushed.
Configuration reaches the DAG the way an operator would give it: a run's conf, and Airflow
Connections created through the REST API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from receiver.dags import read_airflow_trailers
from receiver.trailers import AirflowClaim, Trailer, parse_trailers
from tests.gitops import GitOpsRepo, git
from tests.integration.airflow_harness import AirflowServer
from tests.integration.fluxback_service import FluxbackService, fluxback_config

pytestmark = pytest.mark.integration

DEPLOY = "deploy_model"
CONSUMER = "model_deployed"
POST_DEPLOY = "post_deploy_model"
RACE = "fluxback_concurrent_commit"  # tests/integration/dags: a commit task racing another writer
WAIT = "wait_for_deploy"
CLUSTER = "prod"  # what the Flux Alert sends as eventMetadata.cluster; the consumer DAG schedules on it
OBJECT = "ml-models"  # the Kustomization that applies ./ml
MANIFEST = "ml/model-server/release.yaml"
RELEASE = """\
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: model-server  # serves the current model
  namespace: ml
spec:
  values:
    image:
      repository: ghcr.io/acme/model-server
      tag: "v1.0.0"  # set by the deploy_model DAG
"""
RECEIVER_TOKEN = "flux-receiver-token"
RECEIVER_DIGEST = "0123abcd4567ef"  # for a `generic` Receiver the path is the secret: never logged
DEADLINE_MESSAGE = "Flux never reported revision"


@pytest.fixture(scope="module")
def examples(airflow: AirflowServer) -> AirflowServer:
    """Airflow with the example DAGs parsed and unpaused (the asset consumer must be, to get runs)."""
    airflow.wait_for_dags(DEPLOY, CONSUMER, POST_DEPLOY, timeout=120)
    return airflow


@pytest.fixture
def gitops(tmp_path: Path) -> GitOpsRepo:
    repo = GitOpsRepo(tmp_path / "git")
    repo.commit({MANIFEST: RELEASE}, "model server at v1.0.0")
    return repo


@pytest.fixture
def git_conn_id(examples: AirflowServer, gitops: GitOpsRepo) -> Iterator[str]:
    """An Airflow Connection to the test's GitOps repository (file:// needs no credentials)."""
    with examples.connection("gitops", host=gitops.url) as conn_id:
        yield conn_id


@pytest.fixture
def fluxback(tmp_path: Path, examples: AirflowServer, gitops: GitOpsRepo) -> Iterator[FluxbackService]:
    """Fluxback configured as the examples' docs say: the object, the policy, the two rules."""
    root = tmp_path / "fluxback"
    config = fluxback_config(
        root,
        airflow=examples,
        repo=gitops,
        policy=[{"match": {"kind": "Kustomization", "namespace": "flux-system"}, "dags": [DEPLOY]}],
        rules=[
            {
                "match": {
                    "kind": "Kustomization",
                    "namespace": "flux-system",
                    "name": OBJECT,
                    "outcome": "success",
                },
                "object_asset": True,
                "trigger": [{"dag_id": POST_DEPLOY}],
            }
        ],
    )
    config["git"]["objects"].append(
        {
            "kind": "Kustomization",
            "namespace": "flux-system",
            "name": OBJECT,
            "repository": "flux-system/flux-system",
            "path": "./ml",
        }
    )
    service = FluxbackService(root, config)
    service.start()
    yield service
    service.stop()


@pytest.fixture
async def flux_receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A loopback Flux Receiver that records what it is sent; yields its URL and the requests."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook/{digest}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook/{RECEIVER_DIGEST}", received
    await runner.cleanup()


@pytest.fixture
def receiver_conn_id(
    examples: AirflowServer, flux_receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> Iterator[str]:
    """An Airflow Connection to the loopback Flux Receiver, deleted afterwards (Airflow is session-wide)."""
    with examples.connection("receiver", host=flux_receiver[0], password=RECEIVER_TOKEN) as conn_id:
        yield conn_id


def start_deploy(airflow: AirflowServer, **conf: Any) -> str:
    run_id = f"deploy__{uuid.uuid4().hex[:12]}"
    airflow.trigger(DEPLOY, run_id, conf)
    return run_id


async def deferred_push(airflow: AirflowServer, run_id: str) -> dict[str, Any]:
    """Wait until the run's sensor is deferred (the commit was pushed); returns the commit task's XCom."""
    settled = ["deferred", "success", "failed", "upstream_failed"]
    state = await airflow.wait_for_ti_state(DEPLOY, run_id, WAIT, settled, within=120)
    assert state == "deferred", explain(airflow, run_id)
    push: dict[str, Any] = airflow.xcom(DEPLOY, run_id, "commit")
    return push


def task_log(airflow: AirflowServer, run_id: str, task_id: str, dag_id: str = DEPLOY) -> str:
    """The task's log of its latest try, as text (the JSON of Airflow's structured log)."""
    ti = airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{max(ti['try_number'], 1)}"
    return json.dumps(airflow.api("GET", path, params={"full_content": "true"}))


async def logged(airflow: AirflowServer, run_id: str, task_id: str, text: str, dag_id: str = DEPLOY) -> str:
    """The task's log once `text` is in it (or after 90 s): a run can be finished in Airflow's
    database a moment before its task's last log lines are written."""

    def check() -> tuple[bool, str]:
        log = task_log(airflow, run_id, task_id, dag_id)
        return text in log, log

    try:
        return await airflow.wait_until(check, 90, f"{text!r} in the log of {task_id}")
    except AssertionError:
        return log_and_why(airflow, run_id, task_id, dag_id)  # the caller's assertion shows it


def log_and_why(airflow: AirflowServer, run_id: str, task_id: str, dag_id: str) -> str:
    """The task's log with what explains a missing line: the task instance, its log files on
    disk, and what the scheduler said about the run."""
    ti = airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    folder = airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    files = sorted(path.name for path in folder.glob("*")) if folder.is_dir() else []
    scheduler = [line for line in airflow.component_log("scheduler").splitlines() if run_id in line]
    return "\n".join(
        [task_log(airflow, run_id, task_id, dag_id), json.dumps(ti), f"log files: {files}", *scheduler[-20:]]
    )


async def finished(airflow: AirflowServer, run_id: str, dag_id: str = DEPLOY) -> str:
    """The run's final state; when it is not what a test expects, `explain` says why."""
    return await airflow.wait_for_run_state(dag_id, run_id, within=120)


def explain(airflow: AirflowServer, run_id: str, dag_id: str = DEPLOY) -> str:
    """Task states and the logs of failed tasks, for assertion messages."""
    states = airflow.task_states(dag_id, run_id)
    logs = [
        f"--- {task} ---\n{task_log(airflow, run_id, task, dag_id)[-3000:]}"
        for task, state in states.items()
        if state == "failed"
    ]
    return "\n".join([json.dumps(states), *logs])


async def consumer_reports(airflow: AirflowServer, revision: str) -> list[dict[str, Any]]:
    """What the successful runs of the asset consumer reported, once one of them reports `revision`."""

    def reported() -> tuple[bool, list[dict[str, Any]]]:
        reports = []
        for run in airflow.dag_runs(CONSUMER):
            if run["state"] == "success":
                reports += airflow.api(
                    "GET",
                    f"/dags/{CONSUMER}/dagRuns/{run['dag_run_id']}/taskInstances/report_deploys/xcomEntries/return_value",
                    params={"deserialize": "true"},
                )["value"]
        return any(r["revision"] == revision for r in reports), reports

    return await airflow.wait_until(reported, 60, f"a model_deployed run reporting {revision}")


def message(gitops: GitOpsRepo, sha: str) -> str:
    return git("log", "-1", "--format=%B", sha, cwd=gitops.remote)


def file_at(gitops: GitOpsRepo, ref: str) -> str:
    return git("show", f"{ref}:{MANIFEST}", cwd=gitops.remote) + "\n"


async def test_a_reported_deploy_lets_the_run_finish_and_feeds_the_downstream_dags(
    examples: AirflowServer,
    gitops: GitOpsRepo,
    git_conn_id: str,
    fluxback: FluxbackService,
    flux_receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    receiver_conn_id: str,
) -> None:
    _, pokes = flux_receiver
    run_id = start_deploy(
        examples, model_version="1.1.0", git_conn_id=git_conn_id, flux_receiver_conn_id=receiver_conn_id
    )

    push = await deferred_push(examples, run_id)

    sha = push["commit"]
    assert push == {
        "revision": f"main@sha1:{sha}",
        "commit": sha,
        "committed": True,
        "repository": gitops.url,
        "branch": "main",
    }
    assert git("rev-parse", "main", cwd=gitops.remote) == sha
    assert file_at(gitops, sha) == RELEASE.replace('"v1.0.0"', '"v1.1.0"')
    assert read_airflow_trailers(message(gitops, sha)) == AirflowClaim(DEPLOY, run_id, (WAIT,))
    commit_log = await logged(examples, run_id, "commit", f"pushed {sha}")
    assert f"pushed {sha}" in commit_log
    assert "Receiver at http://127.0.0.1:" in commit_log
    assert RECEIVER_DIGEST not in commit_log
    [(headers, body)] = pokes
    assert (
        headers["X-Signature"]
        == "sha256=" + hmac.new(RECEIVER_TOKEN.encode(), body, hashlib.sha256).hexdigest()
    )
    assert json.loads(body)["revision"] == push["revision"]

    delivery = await fluxback.wait_delivery(
        await fluxback.report(sha, name=OBJECT, metadata={"cluster": CLUSTER})
    )

    assert sorted((a["kind"], a["state"]) for a in delivery["actions"]) == [
        ("asset_event", "done"),
        ("mark_task", "done"),
        ("trigger_dag", "done"),
    ]
    assert await finished(examples, run_id) == "success", explain(examples, run_id)
    states = examples.task_states(DEPLOY, run_id)
    assert (states["smoke_test"], states["rollback"]) == ("success", "skipped")
    authoring = [
        {"dag_id": DEPLOY, "run_id": run_id, "instance": "default", "commit": sha, "change": "deploy"}
    ]

    trigger = next(a for a in delivery["actions"] if a["kind"] == "trigger_dag")
    post_run_id = trigger["target"]["dag_run_id"]
    assert await examples.wait_for_run_state(POST_DEPLOY, post_run_id, within=60) == "success"
    assert examples.xcom(POST_DEPLOY, post_run_id, "warm_up") == {
        "revision": push["revision"],
        "authoring_runs": authoring,
    }

    reports = await consumer_reports(examples, push["revision"])
    assert {"revision": push["revision"], "authoring_runs": authoring} in reports


async def test_a_failed_deploy_is_rolled_back_and_the_rollback_is_seen_as_one(
    examples: AirflowServer, gitops: GitOpsRepo, git_conn_id: str, fluxback: FluxbackService
) -> None:
    run_id = start_deploy(examples, model_version="2.0.0-broken", git_conn_id=git_conn_id)
    push = await deferred_push(examples, run_id)

    await fluxback.wait_delivery(
        await fluxback.report(
            push["commit"],
            name=OBJECT,
            reason="HealthCheckFailed",
            severity="error",
            message="health check failed after 30s: timeout waiting for: [Deployment/ml/model-server]",
            metadata={"cluster": CLUSTER},
        )
    )

    assert await finished(examples, run_id) == "failed", explain(examples, run_id)
    states = examples.task_states(DEPLOY, run_id)
    assert (states[WAIT], states["rollback"], states["smoke_test"]) == (
        "failed",
        "success",
        "upstream_failed",
    )
    rolled_back = examples.xcom(DEPLOY, run_id, "rollback")
    assert rolled_back["committed"] is True
    assert git("rev-parse", "main~1", cwd=gitops.remote) == push["commit"]
    assert git("rev-parse", "main", cwd=gitops.remote) == rolled_back["commit"]
    assert file_at(gitops, "main") == RELEASE
    assert rolled_back["reverts"] == push["commit"]
    rollback_message = message(gitops, rolled_back["commit"])
    assert read_airflow_trailers(rollback_message) == AirflowClaim(DEPLOY, run_id)
    assert Trailer("Fluxback-Change", "rollback") in parse_trailers(rollback_message)

    # The revert goes live: the success rule and the asset fire as for a deploy; both DAGs can tell.
    delivery = await fluxback.wait_delivery(
        await fluxback.report(rolled_back["commit"], name=OBJECT, metadata={"cluster": CLUSTER})
    )
    trigger = next(a for a in delivery["actions"] if a["kind"] == "trigger_dag")
    post_run_id = trigger["target"]["dag_run_id"]
    assert await examples.wait_for_run_state(POST_DEPLOY, post_run_id, within=60) == "success"
    changes = {
        run["commit"]: run["change"]
        for run in examples.xcom(POST_DEPLOY, post_run_id, "warm_up")["authoring_runs"]
    }
    assert changes[rolled_back["commit"]] == "rollback"
    assert "ROLLBACK" in await logged(examples, post_run_id, "warm_up", "ROLLBACK", POST_DEPLOY)
    rollback_revision = f"main@sha1:{rolled_back['commit']}"
    [consumed] = [
        r for r in await consumer_reports(examples, rollback_revision) if r["revision"] == rollback_revision
    ]
    assert {run["commit"]: run["change"] for run in consumed["authoring_runs"]}[
        rolled_back["commit"]
    ] == "rollback"


async def test_a_deploy_never_reported_fails_at_the_deadline_saying_where_to_look(
    examples: AirflowServer, gitops: GitOpsRepo, git_conn_id: str
) -> None:
    run_id = start_deploy(examples, model_version="3.0.0", git_conn_id=git_conn_id, deploy_deadline_seconds=5)
    push = await deferred_push(examples, run_id)

    assert await finished(examples, run_id) == "failed", explain(examples, run_id)

    states = examples.task_states(DEPLOY, run_id)
    assert (states[WAIT], states["rollback"]) == ("failed", "success")
    log = await logged(examples, run_id, WAIT, DEADLINE_MESSAGE)
    assert DEADLINE_MESSAGE in log
    assert push["revision"] in log
    assert f"fluxback deliveries --revision {push['commit']}" in log
    assert file_at(gitops, "main") == RELEASE


async def test_nothing_to_commit_means_nothing_to_wait_for(
    examples: AirflowServer, gitops: GitOpsRepo, git_conn_id: str
) -> None:
    tip = git("rev-parse", "main", cwd=gitops.remote)
    run_id = start_deploy(examples, model_version="1.0.0", git_conn_id=git_conn_id)

    assert await finished(examples, run_id) == "success", explain(examples, run_id)

    push = examples.xcom(DEPLOY, run_id, "commit")
    assert (push["committed"], push["commit"]) == (False, tip)
    assert git("rev-parse", "main", cwd=gitops.remote) == tip
    states = examples.task_states(DEPLOY, run_id)
    assert (states[WAIT], states["smoke_test"], states["rollback"]) == ("success", "success", "skipped")
    log = await logged(examples, run_id, WAIT, "That means git has it, not that Flux applied it")
    assert "nothing to wait for" in log
    assert "That means git has it, not that Flux applied it" in log


async def test_a_push_rejected_by_a_concurrent_push_is_retried_on_the_new_tip(
    examples: AirflowServer, gitops: GitOpsRepo, git_conn_id: str
) -> None:
    examples.wait_for_dags(RACE, timeout=60)
    run_id = f"race__{uuid.uuid4().hex[:12]}"

    examples.trigger(RACE, run_id, {"git_conn_id": git_conn_id, "remote": gitops.url})

    assert await finished(examples, run_id, RACE) == "success", explain(examples, run_id, RACE)
    push = examples.xcom(RACE, run_id, "commit")
    assert push["committed"] is True
    assert git("rev-parse", "main", cwd=gitops.remote) == push["commit"]
    assert git("log", "-1", "--format=%s", "main~1", cwd=gitops.remote) == "Concurrent"
    assert git("show", "main:concurrent.txt", cwd=gitops.remote) == "pushed by another writer"
    assert file_at(gitops, "main") == RELEASE.replace('"v1.0.0"', '"v4.0.0"')
    log = await logged(examples, run_id, "commit", f"pushed {push['commit']}", RACE)
    assert "rejected" in log and "applying the change again on the new tip" in log
    assert f"pushed {push['commit']}" in log and "(attempt 2)" in log
