"""Wait for Flux to deploy a commit without holding a worker slot: `WaitForDeploySensor`.

The sensor does not poll anything. It defers itself to the triggerer with a
`DateTimeTrigger` set to its deadline, and Fluxback ends the wait from outside:
when Flux reports the commit's revision, Fluxback PATCHes this task instance to
`success` or `failed` (the trigger row is then removed and downstream tasks run,
so a `trigger_rule="one_failed"` rollback branch runs on failure). Using Airflow's
own `DateTimeTrigger` means there is no custom trigger class that the triggerer
would have to import.

If the deadline passes first, the trigger fires, the task resumes in
`execute_complete` and fails with `AirflowSensorTimeout` (not retried: retrying
would only wait again for an event that did not come) and a message naming the
revision and the command that shows what Fluxback received for it. With
`soft_fail=True` it is skipped instead.

When the commit task committed nothing (the repository already had the change),
Flux has nothing new to report and Fluxback nothing to mark, so the sensor
succeeds at once and logs why. Succeeding rather than skipping lets downstream
checks (a smoke test) still run against what is deployed; a skip would skip them
too and hide that the run verified nothing.

It subclasses `BaseOperator`, not `BaseSensorOperator`: the latter's poke loop,
modes and numeric `timeout` do not apply to a wait that is resolved from outside,
and `deadline` here is templated, so a run's params can set it.

This module imports Airflow; `receiver.dags` loads it only when the sensor is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, AirflowSkipException

DEFAULT_DEADLINE = timedelta(hours=1)


def deadline_message(push: Mapping[str, Any], waited: timedelta, deadline: str, task: str) -> str:
    """What the failed task says when the deadline passed: which revision, and where to look."""
    commit = push.get("commit", "?")
    return (
        f"Flux never reported revision {push.get('revision', '?')} (commit {commit} of"
        f" {push.get('repository', '?')}) as deployed: Fluxback did not mark task {task} within"
        f" {waited} (deadline {deadline}). See what Fluxback received for this commit:"
        f" `fluxback deliveries --revision {commit}`. No delivery means Flux sent no event for"
        " it (check the Flux Alert and Provider, and `flux get kustomizations -A`); a delivery's"
        " decisions and actions say why this task was not marked."
    )


class WaitForDeploySensor(BaseOperator):  # type: ignore[misc]  # Airflow is not installed where mypy runs
    """Wait, deferred, until Fluxback marks this task, or fail at the deadline.

    Args:
        commit_task_id: the `GitCommitOperator` (or `@task` returning `PushResult.as_xcom()`)
            whose commit this task waits for; that task must name this one in `mark`.
        deadline: how long to wait, from when this task starts: a timedelta or seconds
            (templated, e.g. `"{{ params.deploy_deadline_seconds }}"`).
        soft_fail: at the deadline, skip instead of failing.
    """

    template_fields: Sequence[str] = ("commit_task_id", "deadline")
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        commit_task_id: str,
        deadline: timedelta | float | str = DEFAULT_DEADLINE,
        soft_fail: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.commit_task_id = commit_task_id
        self.deadline = deadline
        self.soft_fail = soft_fail

    def execute(self, context: Context) -> None:
        push = context["ti"].xcom_pull(task_ids=self.commit_task_id)
        if not isinstance(push, Mapping) or "committed" not in push:
            raise AirflowException(
                f"task {self.commit_task_id!r} returned no push result ({push!r}); it must be a"
                " GitCommitOperator or return PushResult.as_xcom()"
            )
        if not push["committed"]:
            self.log.info(
                "Nothing was committed, nothing to wait for: %s %s already had the change at %s.",
                push.get("repository"),
                push.get("branch"),
                push.get("commit"),
            )
            return
        waited = _duration(self.deadline)
        deadline = datetime.now(UTC) + waited
        self.log.info(
            "Waiting until %s for Flux to report %s deployed; Fluxback marks this task success or"
            " failed when it does.",
            deadline.isoformat(),
            push.get("revision"),
        )
        self.defer(
            trigger=DateTimeTrigger(moment=deadline),
            method_name="execute_complete",
            kwargs={"push": dict(push), "waited": waited.total_seconds(), "deadline": deadline.isoformat()},
        )

    def execute_complete(
        self,
        context: Context,
        event: Any = None,
        *,
        push: Mapping[str, Any],
        waited: float,
        deadline: str,
    ) -> NoReturn:
        """The deadline passed without Fluxback marking this task."""
        ti = context["ti"]
        message = deadline_message(
            push, timedelta(seconds=waited), deadline, f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
        )
        self.log.error(message)
        if self.soft_fail:
            raise AirflowSkipException(message)
        raise AirflowSensorTimeout(message)


def _duration(value: timedelta | float | str) -> timedelta:
    duration = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
    if duration <= timedelta(0):
        raise ValueError(f"deadline must be positive, got {value!r}")
    return duration
