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
Flux has nothing new to report and Fluxback nothing to mark, so there is nothing
to wait for. `committed: false` says only that git has the change, not that Flux
applied it: another run may have pushed the same change and still be waiting for
it, or its deploy may have failed. By default (`when_unchanged="succeed"`) the
sensor succeeds at once with a WARNING saying so: the usual case is a deploy of
what is already live, and downstream checks (a smoke test) then still run against
what is deployed, where a skip would skip them too. `"skip"` or `"fail"` are for
DAGs that must not go on without a deploy they saw themselves.

A sensor mapped together with its commit task (`mark_map_index="same"`) reads
the push result of its own map index; a mapped sensor after an unmapped commit
task reads that task's single result.

It subclasses `BaseOperator`, not `BaseSensorOperator`: the latter's poke loop,
modes and numeric `timeout` do not apply to a wait that is resolved from outside,
and `deadline` here is templated, so a run's params can set it.

This module imports Airflow; `receiver.dags` loads it only when the sensor is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, cast, get_args

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

DEFAULT_DEADLINE = timedelta(hours=1)

WhenUnchanged = Literal["succeed", "skip", "fail"]
"""What the sensor does when the commit task committed nothing."""


def unchanged_message(push: Mapping[str, Any], when_unchanged: WhenUnchanged) -> str:
    """What the sensor says when nothing was committed: git has the change, which is not a deploy seen."""
    outcome = {
        "succeed": "Succeeding without waiting",
        "skip": "Skipping",
        "fail": "Failing",
    }[when_unchanged]
    return (
        f"Nothing was committed, nothing to wait for: {push.get('repository')} {push.get('branch')}"
        f" already had the change at {push.get('commit')}. That means git has it, not that Flux"
        " applied it: another run may have pushed the same change and still be waiting for its"
        f" deploy, or that deploy may have failed. {outcome} (when_unchanged={when_unchanged!r})."
    )


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
        when_unchanged: when the commit task committed nothing, `"succeed"` (with a warning),
            `"skip"` (downstream tasks are skipped too) or `"fail"` (not retried); templated.
    """

    template_fields: Sequence[str] = ("commit_task_id", "deadline", "when_unchanged")
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        commit_task_id: str,
        deadline: timedelta | float | str = DEFAULT_DEADLINE,
        soft_fail: bool = False,
        when_unchanged: WhenUnchanged | str = "succeed",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.commit_task_id = commit_task_id
        self.deadline = deadline
        self.soft_fail = soft_fail
        self.when_unchanged = when_unchanged

    def execute(self, context: Context) -> None:
        push = _pushed(context["ti"], self.commit_task_id)
        if not isinstance(push, Mapping) or "committed" not in push:
            raise AirflowException(
                f"task {self.commit_task_id!r} returned no push result ({push!r}); it must be a"
                " GitCommitOperator or return PushResult.as_xcom()"
            )
        if not push["committed"]:
            when_unchanged = _when_unchanged(self.when_unchanged)
            message = unchanged_message(push, when_unchanged)
            self.log.warning(message)
            if when_unchanged == "skip":
                raise AirflowSkipException(message)
            if when_unchanged == "fail":
                raise AirflowFailException(message)
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


def _pushed(ti: Any, commit_task_id: str) -> Any:
    """The commit task's push result for this task instance: of its own map index when it is mapped.

    Without `map_indexes`, `xcom_pull` returns a list of every index's value when the commit
    task is mapped. A mapped sensor whose commit task is not mapped falls back to index -1.
    """
    own = ti.map_index if isinstance(ti.map_index, int) else -1
    if own >= 0:
        push = ti.xcom_pull(task_ids=commit_task_id, map_indexes=own)
        if push is not None:
            return push
    return ti.xcom_pull(task_ids=commit_task_id, map_indexes=-1)


def _when_unchanged(value: str) -> WhenUnchanged:
    """The rendered `when_unchanged`; a wrong value fails the task, which a retry would not fix."""
    choices = get_args(WhenUnchanged)
    if value not in choices:
        raise AirflowFailException(f"when_unchanged must be one of {', '.join(choices)}, got {value!r}")
    return cast(WhenUnchanged, value)


def _duration(value: timedelta | float | str) -> timedelta:
    duration = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
    if duration <= timedelta(0):
        raise ValueError(f"deadline must be positive, got {value!r}")
    return duration
