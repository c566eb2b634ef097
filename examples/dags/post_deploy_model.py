"""Post-deploy work that Fluxback triggers by a rule when the model Kustomization is live.

Fluxback config (see docs/dag-authors.md):

    rules:
      - match: {kind: Kustomization, namespace: flux-system, name: ml-models, outcome: success}
        trigger: [{dag_id: post_deploy_model}]

Fluxback creates one run per (object, revision, outcome) with a deterministic run id,
so Flux repeating its event does not start the work twice. The run's `conf` carries
the Flux object, the outcome, the revision, the commits made live and the authoring runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, task

with DAG(
    dag_id="post_deploy_model",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback", "example"],
):

    @task
    def warm_up(dag_run: Any) -> dict[str, Any]:
        """Stand-in for post-deploy work (warm caches, refresh a feature store, announce)."""
        conf = dict(dag_run.conf or {})
        target = conf.get("object", {})
        print(
            f"{target.get('kind')}/{target.get('namespace')}/{target.get('name')} {conf.get('outcome')}"
            f" at {conf.get('revision')}: {len(conf.get('commits', []))} commit(s) made live"
        )
        for run in conf.get("authoring_runs", []):
            print(f"  authored by {run['dag_id']} run {run['run_id']} (commit {run['commit'][:12]})")
        return {"revision": conf.get("revision"), "authoring_runs": conf.get("authoring_runs", [])}

    warm_up()
