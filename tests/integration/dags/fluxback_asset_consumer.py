"""A DAG scheduled on the asset Fluxback emits events for; it logs and returns (XCom) the `extra`
of the events that triggered it.

Its task also produces `.../apps-smoke`, a second asset whose URI contains the first one, so the
tests can check that asset lookup by URI is exact."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset

APPS = Asset("flux://test/Kustomization/flux-system/apps")
APPS_SMOKE = Asset("flux://test/Kustomization/flux-system/apps-smoke")


def show_events(**context: Any) -> list[dict[str, Any]]:
    extras = []
    for asset, events in context["triggering_asset_events"].items():
        for event in events:
            print("triggering event:", getattr(asset, "uri", asset), json.dumps(event.extra, default=str))
            extras.append(dict(event.extra))
    return extras


with DAG(
    dag_id="fluxback_asset_consumer",
    schedule=[APPS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
):
    PythonOperator(task_id="show_events", python_callable=show_events, outlets=[APPS_SMOKE])
