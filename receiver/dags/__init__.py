"""The DAG author's half of Fluxback: commit with trailers, wait for the deploy, schedule on it.

```python
from receiver.dags import GitCommitOperator, WaitForDeploySensor, YamlValue

commit = GitCommitOperator(
    task_id="commit",
    git_conn_id="gitops",
    change=YamlValue("apps/model/release.yaml", "spec.values.image.tag", "{{ params.tag }}"),
    message="Deploy model {{ params.tag }}",
    mark="wait_for_deploy",
)
wait = WaitForDeploySensor(task_id="wait_for_deploy", commit_task_id="commit")
commit >> wait
```

Everything here runs where Airflow runs, so it needs only the standard library,
PyYAML and Airflow (`pip install 'fluxback[airflow]'`); it shares the trailer
and asset-URI code with the service (`receiver.trailers`, `receiver.assets`) so
the two sides cannot disagree. The operator and the sensor import Airflow when
first used; everything else works without it (and is tested without it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from receiver.assets import flux_object_uri
from receiver.dags.changes import KustomizeImage, RevertCommit, YamlValue
from receiver.dags.git_push import (
    Change,
    GitAuth,
    GitIdentity,
    GitPushError,
    PushRejected,
    PushResult,
    WorkTree,
    commit_and_push,
)
from receiver.dags.receiver_poke import FluxReceiver
from receiver.dags.trailers import (
    add_airflow_trailers,
    airflow_claim,
    airflow_trailers,
    read_airflow_trailers,
)
from receiver.dags.yaml_edit import YamlEditError, set_kustomization_image, set_yaml_value

if TYPE_CHECKING:
    from receiver.dags.operators import GitCommitOperator, push_change
    from receiver.dags.sensor import WaitForDeploySensor

_NEED_AIRFLOW = {
    "GitCommitOperator": "receiver.dags.operators",
    "push_change": "receiver.dags.operators",
    "WaitForDeploySensor": "receiver.dags.sensor",
}

__all__ = [
    "Change",
    "FluxReceiver",
    "GitAuth",
    "GitCommitOperator",
    "GitIdentity",
    "GitPushError",
    "KustomizeImage",
    "PushRejected",
    "PushResult",
    "RevertCommit",
    "WaitForDeploySensor",
    "WorkTree",
    "YamlEditError",
    "YamlValue",
    "add_airflow_trailers",
    "airflow_claim",
    "airflow_trailers",
    "commit_and_push",
    "flux_object_uri",
    "push_change",
    "read_airflow_trailers",
    "set_kustomization_image",
    "set_yaml_value",
]


def __getattr__(name: str) -> Any:
    """Load the Airflow-facing names on first use, so the rest works where Airflow is not installed."""
    module = _NEED_AIRFLOW.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as error:
        if error.name != "airflow" and not (error.name or "").startswith("airflow."):
            raise
        raise ImportError(f"receiver.dags.{name} needs Airflow: pip install 'fluxback[airflow]'") from error
