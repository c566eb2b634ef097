"""`post_deploy`: the downstream DAG Fluxback triggers; it prints and returns its conf (XCom)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def report(**context: Any) -> dict[str, Any]:
    conf = dict(context["dag_run"].conf or {})
    print("post_deploy conf:", json.dumps(conf, sort_keys=True))
    return conf


with DAG(
    dag_id="post_deploy",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
):
    PythonOperator(task_id="report", python_callable=report)
