"""Post-deploy work that Fluxback triggers by a rule when the model Kustomization is live.

Fluxback config (see docs/dag-authors.md):

    rules:
      - match: {kind: Kustomization, namespace: flux-system, name: ml-models, outcome: success}
        trigger: [{dag_id: post_deploy_model}]

Fluxback creates one run per (object, revision, outcome) with a deterministic run id,
so Flux repeating its event does not start the work twice. The run's `conf` carries
the Flux object, the outcome, the revision, the commits made live and the authoring runs.

The rule matches any success of the Kustomization, so a rollback going live starts
this DAG too; `change_of` tells it from a deploy by asking the authoring run (a commit
its `rollback` task returned is a rollback), and the work can then differ.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, task


def change_of(run: dict[str, Any], ti: Any) -> str:
    """`"rollback"` when the authoring run's `rollback` task made this commit, else `"deploy"`."""
    rollback = ti.xcom_pull(task_ids="rollback", dag_id=run["dag_id"], run_id=run["run_id"], map_indexes=-1)
    return "rollback" if isinstance(rollback, dict) and rollback.get("commit") == run["commit"] else "deploy"


with DAG(
    dag_id="post_deploy_model",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback", "example"],
):

    @task
    def warm_up(dag_run: Any, ti: Any) -> dict[str, Any]:
        """Stand-in for post-deploy work (warm caches, refresh a feature store, announce)."""
        conf = dict(dag_run.conf or {})
        target = conf.get("object", {})
        print(
            f"{target.get('kind')}/{target.get('namespace')}/{target.get('name')} {conf.get('outcome')}"
            f" at {conf.get('revision')}: {len(conf.get('commits', []))} commit(s) made live"
        )
        runs = [{**run, "change": change_of(run, ti)} for run in conf.get("authoring_runs", [])]
        for run in runs:
            print(
                f"  {run['change'].upper()} authored by {run['dag_id']} run {run['run_id']}"
                f" (commit {run['commit'][:12]})"
            )
        return {"revision": conf.get("revision"), "authoring_runs": runs}

    warm_up()
