"""A mapped deploy wait: `wait_for_deploy` has two indexes (two clusters, say), both deferred
until Fluxback marks them; `after_deploy` runs once every index succeeded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import DAG

with DAG(
    dag_id="fluxback_wait_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
):
    wait = TimeDeltaSensor.partial(task_id="wait_for_deploy", deferrable=True).expand(
        delta=[timedelta(days=30), timedelta(days=31)]
    )
    wait >> EmptyOperator(task_id="after_deploy")
