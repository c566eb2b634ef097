"""A commit task and a `WaitForDeploySensor` mapped together over two manifests (a mapped task
group): each index commits its own file with `mark_map_index="same"`, so each commit's trailers
name its own sensor index, and each sensor index must wait for its own index's commit."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param, task_group

from receiver.dags import GitCommitOperator, WaitForDeploySensor, YamlValue

MANIFESTS = ["apps/alpha.yaml", "apps/beta.yaml"]

with DAG(
    dag_id="fluxback_mapped_deploy",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
    params={
        "git_conn_id": Param("", type="string"),
        "tag": Param("v1", type="string"),
        "when_unchanged": Param("succeed", enum=["succeed", "skip", "fail"]),
    },
):

    @task_group  # type: ignore[untyped-decorator]  # Airflow is not installed where mypy runs
    def deploy(manifest: str) -> None:
        commit = GitCommitOperator(
            task_id="commit",
            git_conn_id="{{ params.git_conn_id }}",
            change=YamlValue(manifest, "spec.tag", "{{ params.tag }}"),
            message="Deploy manifest {{ ti.map_index }} at {{ params.tag }}",
            mark="deploy.wait_for_deploy",
            mark_map_index="same",
        )
        wait = WaitForDeploySensor(
            task_id="wait_for_deploy",
            commit_task_id="deploy.commit",
            deadline=60,
            when_unchanged="{{ params.when_unchanged }}",
        )
        commit >> wait

    deploy.expand(manifest=MANIFESTS)
