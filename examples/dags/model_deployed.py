"""Runs whenever Flux reports the model Kustomization deployed: scheduled on its Fluxback asset.

Fluxback creates an asset event on `flux://<cluster>/Kustomization/flux-system/ml-models`
when a rule with `object_asset: true` matches a success of that Kustomization; the
event's `extra` carries the deployed revision, the commits and the Airflow runs that
authored them. The URI is built with the same function Fluxback uses, so the two
cannot drift apart.

Airflow may fold several asset events into one run (a burst, or events created while
this DAG was paused), so the task reads every triggering event, not just the first.

A rollback going live is a success of the Kustomization too, so this DAG runs for it
as well. The event names the authoring run and commit, not the commit's message, so
`change_of` asks the authoring run itself: a commit that its `rollback` task returned
is a rollback (that commit also carries `Fluxback-Change: rollback` in git).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

from receiver.dags import flux_object_uri

CLUSTER = "prod"
"""The cluster name the Flux Alert sends as `eventMetadata.cluster`."""
MODELS = Asset(flux_object_uri(CLUSTER, "Kustomization", "flux-system", "ml-models"))


def change_of(run: dict[str, Any], ti: Any) -> str:
    """`"rollback"` when the authoring run's `rollback` task made this commit, else `"deploy"`."""
    rollback = ti.xcom_pull(task_ids="rollback", dag_id=run["dag_id"], run_id=run["run_id"], map_indexes=-1)
    return "rollback" if isinstance(rollback, dict) and rollback.get("commit") == run["commit"] else "deploy"


with DAG(
    dag_id="model_deployed",
    schedule=[MODELS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback", "example"],
):

    @task
    def report_deploys(triggering_asset_events: Any, ti: Any) -> list[dict[str, Any]]:
        """Print what went live, whether it is a deploy or a rollback, and which run authored it."""
        deploys = []
        for asset, events in triggering_asset_events.items():
            for event in events:
                extra = event.extra
                runs = [{**run, "change": change_of(run, ti)} for run in extra.get("authoring_runs", [])]
                print(f"{asset.uri}: {extra.get('outcome')} at revision {extra.get('revision')}")
                for run in runs:
                    print(
                        f"  {run['change'].upper()}: commit {run['commit'][:12]} authored by"
                        f" {run['dag_id']} run {run['run_id']}"
                    )
                deploys.append({"revision": extra.get("revision"), "authoring_runs": runs})
        return deploys

    report_deploys()
