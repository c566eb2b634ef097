"""A deploy that waits for Fluxback: `wait_for_deploy` defers for 30 days, so in practice only a
REST PATCH of its state (what Fluxback does when Flux reports the commit) ends the wait.
success runs `after_deploy`; failed runs `rollback` instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import DAG

with DAG(
    dag_id="fluxback_wait",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
):
    wait = TimeDeltaSensor(task_id="wait_for_deploy", delta=timedelta(days=30), deferrable=True)
    wait >> [
        EmptyOperator(task_id="after_deploy"),
        EmptyOperator(task_id="rollback", trigger_rule="one_failed"),
    ]
