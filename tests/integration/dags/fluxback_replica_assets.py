"""Makes the object assets of the two-replica test exist: Airflow keeps an asset only while a parsed
DAG references it. Nothing schedules on them, so their events start no runs and a duplicate event
shows up only as a second event in the asset's list. `replica-quiet` is for tests that post many
events to one asset (tests/integration/test_airflow_client.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset

from receiver.assets import flux_object_uri

OBJECTS = 25
"""Kustomizations flux-system/replica-00 ... replica-24 (tests/integration/test_replicas.py)."""

with DAG(
    dag_id="fluxback_replica_assets",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
):
    EmptyOperator(
        task_id="produce",
        outlets=[
            Asset(flux_object_uri("test", "Kustomization", "flux-system", f"replica-{index:02d}"))
            for index in range(OBJECTS)
        ]
        + [Asset(flux_object_uri("test", "Kustomization", "flux-system", "replica-quiet"))],
    )
