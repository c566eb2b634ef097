"""Deploy a model version through GitOps and wait until Flux has rolled it out.

    render -> commit -> wait_for_deploy -> smoke_test
                                       \\-> rollback   (the deploy failed, or was never reported)

`commit` sets the image tag in the model server's HelmRelease and pushes it with
this run's trailers; `wait_for_deploy` is deferred (no worker slot) until
Fluxback marks it when Flux reports the revision. On failure, or when the
deadline passes first, `rollback` reverts the commit. The revert carries the
run's trailers too (so Fluxback links it to this run) plus `Fluxback-Change:
rollback`, and `rollback` returns its push result, so whoever sees the revert go
live (a rule's DAG, an asset consumer) can tell it from a deploy: see
`model_deployed.py`.

To deploy again, trigger a new run. Clearing a finished run does not redeploy
what is already in git: its commit task finds nothing to change and the sensor
does not wait (see docs/dag-authors.md).

Configuration, per run through params/conf:
- `model_version`: the version to deploy (the image tag is derived from it);
- `git_conn_id`: an Airflow Connection whose host is the GitOps repository URL, with
  login + token (HTTPS) or extra `private_key` + `known_hosts` (SSH);
- `manifest` / `value_path`: the file in the repository and the YAML path of the tag;
- `flux_receiver_conn_id`: optional Connection of a Flux Receiver (host: its URL,
  password: its token) so Flux fetches the commit at once;
- `deploy_deadline_seconds`: how long to wait for Flux's report.

Fluxback must map the Flux Kustomization that applies `manifest` to the repository
(`git.objects`) and allow `deploy_model` in its policy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule, task

from receiver.dags import GitCommitOperator, RevertCommit, WaitForDeploySensor, YamlValue, push_change

with DAG(
    dag_id="deploy_model",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback", "example"],
    params={
        "model_version": Param("1.0.0", type="string", pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$"),
        "git_conn_id": Param("fluxback_gitops", type="string"),
        "branch": Param("main", type="string"),
        "manifest": Param("ml/model-server/release.yaml", type="string"),
        "value_path": Param("spec.values.image.tag", type="string"),
        "flux_receiver_conn_id": Param("", type="string"),
        "deploy_deadline_seconds": Param(1800, type="integer", minimum=1),
    },
):

    @task
    def render(params: dict[str, Any]) -> str:
        """The image tag for the model version (a real pipeline might build or sign here)."""
        return f"v{params['model_version']}"

    commit = GitCommitOperator(
        task_id="commit",
        git_conn_id="{{ params.git_conn_id }}",
        branch="{{ params.branch }}",
        change=YamlValue("{{ params.manifest }}", "{{ params.value_path }}", "{{ ti.xcom_pull('render') }}"),
        message="Deploy model {{ params.model_version }}",
        mark="wait_for_deploy",
        flux_receiver_conn_id="{{ params.flux_receiver_conn_id }}",
    )

    wait = WaitForDeploySensor(
        task_id="wait_for_deploy",
        commit_task_id="commit",
        deadline="{{ params.deploy_deadline_seconds }}",
    )

    @task
    def smoke_test(params: dict[str, Any], ti: Any) -> str:
        """Flux reports the model live; check it answers (here: report what is live)."""
        push = ti.xcom_pull(task_ids="commit")
        print(f"model {params['model_version']} is live from {push['revision']}")
        return str(push["revision"])

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def rollback(params: dict[str, Any], **context: Any) -> dict[str, Any] | None:
        """Revert the deploy commit, so Flux goes back to what ran before; marked as a rollback."""
        push = context["ti"].xcom_pull(task_ids="commit")
        if not push or not push["committed"]:
            print("nothing was committed, nothing to roll back")
            return None
        result = push_change(
            context,
            git_conn_id=params["git_conn_id"],
            branch=params["branch"],
            change=RevertCommit(push["commit"]),
            message=f"Roll back model {params['model_version']}\n\n"
            f"This reverts commit {push['commit']}: Flux did not report {push['revision']}"
            " deployed and healthy.\n\n"
            "Fluxback-Change: rollback",
            flux_receiver_conn_id=params["flux_receiver_conn_id"] or None,
        )
        return {**result.as_xcom(), "reverts": push["commit"]}

    render() >> commit >> wait >> [smoke_test(), rollback()]
